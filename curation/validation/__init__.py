"""Stage 5, validation: does a curated set train a better model, measured, with intervals.

``proxy`` (what every study's trainings share: the proxy model, the eval sets, the one
train-then-evaluate), ``study`` (the runner every study uses: its folder, trainings in rounds,
the training cache, Ray tasks, the results), ``validate`` (fine-tune a proxy on each selection and
its baselines, score held-out sets), ``mix`` (trainings at a design of domain mixes, the mixing
law, the recommended mix), ``mixing_law`` (its math), ``verdicts`` (paired differences, intervals
and verdicts in words), ``answers`` (final answers of math generations).
"""
