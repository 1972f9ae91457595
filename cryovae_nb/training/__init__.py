"""Training: the config, the data and its split, the run folder, the compiled steps, the Trainer.

    config.py    TrainConfig (TensorFlow-free)
    data.py      the train/test split and its file, the epoch order, batch assembly, the loader
    rundir.py    the run folder's format and its one reader (checkpoints, metrics log, RunFolder)
    steps.py     the compiled train / eval steps
    trainer.py   Trainer, Hooks, Callback, train()
    horovod.py   data-parallel training: Horovod behind the Trainer's Hooks
    __main__.py  ``python -m cryovae_nb.training`` (one rank): the ``cryovae train`` command
                 (cryovae_nb.commands.train)

Nothing is imported here, so ``cryovae_nb.training.config`` stays light; import from the modules.
"""
