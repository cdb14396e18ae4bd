"""Runtime pieces for mmengine: hooks, model wrappers, launch-time config checks, a
visualizer for small images."""
from .atomic_checkpoint import (AtomicCheckpointHook, AtomicLocalBackend,
                                checkpoint_problem, find_resumable_checkpoint,
                                save_checkpoint_file, select_resume_checkpoint)
from .data_checks import CocoAudit, audit_coco_file, check_coco_annotations
from .hooks import FreezeLorsSharedHook, RNGStateHook
from .load_checks import (CheckpointMismatchError, LorsCheckpointCheckHook,
                          add_lors_checkpoint_check, check_lors_checkpoint,
                          check_lors_state_dict)
from .lors_settings import (ConfigFit, cfg_options, fit_config, format_config_fit,
                            matching_config_path)
from .model_wrappers import DeviceAwareDistributedDataParallel
from .outputs import check_outputs, same_file
from .runtime import (adapt_cfg_to_machine, check_data_paths, check_pretrained_paths,
                      enable_amp, load_tool_config, use_atomic_checkpoints)
from .visualization import ReadableDetVisualizer, place_labels

__all__ = ['AtomicCheckpointHook', 'AtomicLocalBackend', 'checkpoint_problem',
           'find_resumable_checkpoint', 'select_resume_checkpoint', 'save_checkpoint_file', 'RNGStateHook', 'FreezeLorsSharedHook',
           'LorsCheckpointCheckHook', 'CheckpointMismatchError',
           'add_lors_checkpoint_check', 'check_lors_checkpoint', 'check_lors_state_dict',
           'ConfigFit',
           'cfg_options', 'fit_config', 'format_config_fit', 'matching_config_path',
           'DeviceAwareDistributedDataParallel', 'adapt_cfg_to_machine',
           'check_data_paths', 'check_pretrained_paths', 'load_tool_config', 'enable_amp',
           'use_atomic_checkpoints', 'CocoAudit', 'audit_coco_file', 'check_coco_annotations',
           'ReadableDetVisualizer', 'place_labels', 'check_outputs', 'same_file']
