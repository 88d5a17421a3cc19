"""Workflows: what the commands run (eval, predict, submit, cv, compare), calling the rooms below."""
