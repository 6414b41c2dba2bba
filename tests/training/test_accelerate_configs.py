"""The shipped accelerate configs, read the way ``accelerate launch`` reads them (no GPU needed)."""

from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_multi_gpu_env

from echomimic_core.model.blocks import WanAttentionBlock
from echomimic_core.model.transformer import EchoMimicTransformer
from training.launch import fsdp_plugin

CONFIG_DIR = Path(__file__).resolve().parents[2] / "training" / "accelerate"
EXPECTED = {
    "single_gpu.yaml": DistributedType.NO,
    "multi_gpu_ddp.yaml": DistributedType.MULTI_GPU,
    "fsdp.yaml": DistributedType.FSDP,
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
}


def launch_args(path: Path, *extra: str):
    """The namespace ``accelerate launch --config_file path ... -m training.train`` runs with."""
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), *extra, "-m", "training.train", "--config", "c.yaml"])
    args, _, _ = _validate_launch_command(args)
    return parser, args


def test_every_shipped_config_is_checked():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_the_installed_accelerate(name):
    path = CONFIG_DIR / name
    config = load_config_from_file(str(path))  # unknown top-level keys raise here
    assert config.distributed_type == EXPECTED[name]
    assert config.mixed_precision == "bf16"
    parser, args = launch_args(path)
    assert args.module and args.training_script == "training.train"
    # launch copies fsdp_config keys onto its arguments; a misspelt key would be silently unused
    options = {action.dest for action in parser._actions}
    unknown = sorted((set(config.fsdp_config) | set(config.deepspeed_config)) - options)
    assert not unknown, f"{name}: fsdp/deepspeed_config keys accelerate launch does not know: {unknown}"
    if config.distributed_type == DistributedType.DEEPSPEED:
        from accelerate.utils.launch import prepare_deepspeed_cmd_env

        args.deepspeed_fields_from_accelerate_config = ",".join(config.deepspeed_config)  # as launch_command sets it
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == name[-6]  # deepspeed_zero2/3.yaml
        # the trainer refuses launch settings that contradict the training config
        from training.config import config_from_dict
        from training.launch import check_deepspeed_settings

        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            check_deepspeed_settings(config_from_dict({}))  # defaults: accumulation 1, clipping 1.0
            with pytest.raises(ValueError, match="gradient_accumulation_steps"):
                check_deepspeed_settings(config_from_dict({"optim": {"gradient_accumulation_steps": 3}}))
    elif config.distributed_type != DistributedType.NO:
        env = prepare_multi_gpu_env(args)
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
        assert (env.get("ACCELERATE_USE_FSDP") == "true") == (config.distributed_type == DistributedType.FSDP)


@pytest.fixture
def fsdp_env(monkeypatch):
    _, args = launch_args(CONFIG_DIR / "fsdp.yaml", "--num_processes", "2")
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    # With sync_module_states the plugin asks CUDA for the current device at construction.
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")


def test_fsdp_wraps_each_transformer_block_and_keeps_float32(fsdp_env, tiny_config):
    plugin = fsdp_plugin()
    assert plugin.fsdp_version == 1 and plugin.sharding_strategy.name == "FULL_SHARD"
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.use_orig_params  # LoRA: frozen and trainable parameters share FSDP units
    model = EchoMimicTransformer(tiny_config)
    plugin.set_auto_wrap_policy(model)
    wrapped = [m for m in model.modules() if plugin.auto_wrap_policy(module=m, recurse=False, nonwrapped_numel=0)]
    assert len(wrapped) == tiny_config.num_layers and all(isinstance(m, WanAttentionBlock) for m in wrapped)
    plugin.set_mixed_precision("bf16")  # what AcceleratorState does with the launch's bf16
    policy = plugin.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype, policy.buffer_dtype) == (torch.float32,) * 3


def test_no_fsdp_plugin_without_fsdp(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert fsdp_plugin() is None
