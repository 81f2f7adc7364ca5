"""The study definition: run configurations of any task, the study file and its search space, and the
study and trial folder contract. Knows nothing of Ray or torch."""
