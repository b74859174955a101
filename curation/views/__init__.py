"""What the dashboard's pages draw, computed here so the pages stay thin.

``aggregate`` (bins, samples, summaries), ``render`` (escaped HTML of conversations and tokens),
``pool_map`` (the 2-D map of the embeddings), ``installation`` (versions, device, default model).
"""
