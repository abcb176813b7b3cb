"""lm-eval integration of TABOM-Eval (the ``tabom_dlm`` model, tasks, leaderboards)."""
