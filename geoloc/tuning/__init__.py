"""The Ray and Optuna side: the trainable, the searcher and its Optuna records, the tuner and its
schedulers (ASHA, MOASHA), the study lock and the recovery of a damaged Optuna storage."""
