"""LoRA fine-tuning with middle-layer alignment, and what it produces.

The settings (:mod:`.config`, refused combinations in :mod:`.config_checks`, a schedule that
trains nothing in :mod:`.warmup`); the alignment loss (:mod:`.losses`), what it is fed
(:mod:`.align_setup`, :mod:`.align_stats`) and the schedules that interleave it with the task
(:mod:`.alignment`); the Trainer (:mod:`.trainer`) and one `midalign train` run (:mod:`.run`)
with its folder, checkpoints, logs and model card (:mod:`.run_dir`, :mod:`.checkpoints`,
:mod:`.callbacks`, :mod:`.model_card`); and the exact merge of trained adapters (:mod:`.merge`).
"""
