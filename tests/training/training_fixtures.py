"""Tiny architecture (2 blocks, 2 cells) and a tiny training config, so training-loop tests exercise
the real network and TFRecord pipeline in seconds."""

from nas_deeplab import architecture as arch_lib

TINY_OPERATIONS = ("separable_3x3_2", "atrous_3x3", "skip_connect", "avg_pool_3x3")
TINY_HIDDENSTATE_INDICES = (1, 0, 2, 0)


def tiny_architecture(f=4):
    return arch_lib.Architecture(TINY_OPERATIONS, TINY_HIDDENSTATE_INDICES, (0, 1), f, name="tiny")


def tiny_train_config(logdir, model_config, dataset_dir, **kw):
    from nas_deeplab.training.trainer import TrainConfig
    args = dict(model=model_config, train_logdir=str(logdir), dataset="synthetic", dataset_dir=dataset_dir,
                train_batch_size=4, train_crop_size=(33, 33), training_number_of_steps=6,
                base_learning_rate=0.05, save_interval_steps=3, log_interval_steps=100,
                summary_interval_steps=3, strategy="one_device", deterministic=True, seed=3)
    args.update(kw)
    return TrainConfig(**args)
