"""Modules beside train_gpt.py: what a default run does not need, imported only when an option asks for it,
and what the repository's tools share. train_gpt.py alone runs the record; a run's log embeds the source of
every module of this package that the run imported."""
