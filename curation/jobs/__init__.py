"""Background work and the shared workspace.

``store`` (the job store in SQLite: submit, status, cancel, resume, logs), ``worker`` (the detached
process that runs one job), ``workspace`` (the folder the dashboard and the jobs share).
"""
