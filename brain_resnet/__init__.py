"""The reusable parts of the brain-tumor ResNet project, by role; the scripts (train.py, evaluation.py,
prepare_dataset.py, make_release.py, run_matrix.py) and the benchmarks import them.

    brain_resnet.modeling   the network, config and image processor (the repository's flat modeling/ folder, which
                            saved model folders also carry as trust_remote_code code)
    brain_resnet.folds      near-duplicate groups, the two fold protocols and their dataset columns
    brain_resnet.data       reading a prepared dataset, decoding it once, the device-resident tensors
    brain_resnet.augment    batched augmentation on the device, with hemisphere mirroring and lesion pasting
    brain_resnet.alignment  the penalty that pulls each class's sources together in feature space (--match-sources)
    brain_resnet.group_dro  online group DRO over the (class, source) cells of the data (--group-dro)
    brain_resnet.style_mixing  mixing feature statistics across a batch's slices while training (--mix-styles)
    brain_resnet.engine     model variants, optimiser, training step and epoch, prediction, checkpoints, seeds
    brain_resnet.metrics    classification metrics, their summary over folds, throughput, FLOPs
    brain_resnet.reports    plots, the model card's results and model-index, the config's training_info
    brain_resnet.hub        model folders (the release's float16 shards) and uploading them
    brain_resnet.runs       a train.py output folder: its JSON files, log, fold folders and resume check
    brain_resnet.cli        command-line helpers: UsageError and argparse types
    brain_resnet.calibration  the release's calibration temperature and unfamiliar-image detector, fitted
    brain_resnet.folders    class folders on disk: which folders and files hold data
    brain_resnet.external   slices of other sources, one folder per class: reading and scoring them
    brain_resnet.matrix     the job list of an experiment matrix and the scheduler of its train.py processes

Importing the package loads nothing: each module loads what it needs (folds only numpy).
"""
