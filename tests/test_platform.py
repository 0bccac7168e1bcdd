"""SageMaker, Vertex AI and local contracts map into one typed config."""

from __future__ import annotations

import json

import pytest

from entrypoints import platform
from launcher.errors import SpecError
from launcher.spec import TrainConfig


def test_sagemaker_layout_env_and_string_hyperparameters(tmp_path):
    root = tmp_path / "opt-ml"
    (root / "input/config").mkdir(parents=True)
    (root / "input/config/hyperparameters.json").write_text(
        json.dumps({"lora_r": "8", "learning_rate": "1e-4", "packing": "false", "target_modules": '["q_proj", "v_proj"]'})
    )
    env = {
        "SM_ROOT": str(root),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_CHANNEL_TRAIN": str(tmp_path / "train"),
        "SM_CHANNEL_GENERAL_EVAL": str(tmp_path / "general"),
        "SM_OUTPUT_DATA_DIR": str(tmp_path / "out"),
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
        "TRAINING_JOB_NAME": "fin-r1-abc",
    }
    plat = platform.detect([], env)
    assert plat.kind == "sagemaker" and plat.job_name == "fin-r1-abc"
    assert plat.model_dir == tmp_path / "model"
    assert plat.channels == {"train": tmp_path / "train", "general_eval": tmp_path / "general"}
    assert plat.checkpoint_dir == root / "checkpoints" and plat.failure_file == root / "output/failure"
    assert plat.world.nodes == 1 and plat.world.node_rank == 0
    config = TrainConfig.from_mapping(plat.hyperparameters)
    assert (config.lora_r, config.learning_rate, config.packing, config.target_modules) == (8, 1e-4, False, ["q_proj", "v_proj"])


def test_hyperparameters_round_trip_through_sagemaker_strings():
    config = TrainConfig(lora_r=4, use_dora=True, target_modules=["q_proj", "o_proj"], max_steps=7, learning_rate=3e-5)
    strings = config.to_hyperparameters()
    assert all(isinstance(v, str) for v in strings.values())
    assert TrainConfig.from_mapping(strings) == config


def test_vertex_env_gcs_mount_and_cluster_spec(tmp_path):
    env = {
        "AIP_MODEL_DIR": "gs://bucket/jobs/j1/model/",
        "AIP_CHECKPOINT_DIR": "gs://bucket/jobs/j1/checkpoints/",
        "AIP_TRAINING_DATA_URI": "gs://bucket/data/train-*.jsonl",
        "AIP_VALIDATION_DATA_URI": "gs://bucket/data/eval.jsonl",
        "LAUNCHER_CHANNEL_GENERAL_EVAL": "gs://bucket/data/general/",
        "LAUNCHER_GCS_MOUNT": str(tmp_path / "gcs"),
        "CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": ["host-a:2222"], "workerpool1": ["host-b:2222", "host-c:2222"]},
                                    "task": {"type": "workerpool1", "index": 1}}),
        "CLOUD_ML_JOB_ID": "123",
    }
    plat = platform.detect(["--lora_r=4", "--learning-rate", "0.001"], env)
    mount = tmp_path / "gcs"
    assert plat.kind == "vertex" and plat.job_name == "123"
    assert plat.model_dir == mount / "bucket/jobs/j1/model"
    assert plat.checkpoint_dir == mount / "bucket/jobs/j1/checkpoints"
    assert plat.channels == {"train": mount / "bucket/data/train-*.jsonl", "eval": mount / "bucket/data/eval.jsonl",
                             "general_eval": mount / "bucket/data/general"}
    assert plat.world.nodes == 3 and plat.world.node_rank == 2 and plat.world.master_addr == "host-a"
    assert TrainConfig.from_mapping(plat.hyperparameters).learning_rate == 0.001


def test_local_root_is_the_sagemaker_layout(tmp_path):
    (tmp_path / "input/data/train").mkdir(parents=True)
    (tmp_path / "input/data/eval").mkdir(parents=True)
    plat = platform.detect(["--root", str(tmp_path), "--epochs=2"], env={})
    assert plat.kind == "local"
    assert plat.channels == {"eval": tmp_path / "input/data/eval", "train": tmp_path / "input/data/train"}
    assert plat.model_dir == tmp_path / "model" and plat.checkpoint_dir == tmp_path / "checkpoints"
    assert plat.hyperparameters == {"epochs": "2"}


def test_no_platform_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(SpecError, match="--root JOBDIR"):
        platform.detect([], env={})


def test_unknown_hyperparameter_suggests_the_nearest_key():
    with pytest.raises(SpecError, match="unknown key 'learning_rat'. Did you mean 'learning_rate'"):
        TrainConfig.from_mapping({"learning_rat": "1e-4"})


def test_vertex_wildcards_read_only_the_files_they_match(tmp_path):
    """A managed dataset's export puts training, validation and test files in one folder."""
    from conftest import summary_records, write_jsonl

    from launcher import data

    export = tmp_path / "gcs/b/export"
    for split, n in (("training", 30), ("validation", 5), ("test", 7)):
        write_jsonl(export / f"{split}-00000-of-00001.jsonl", summary_records(n, seed=len(split)))
    env = {"AIP_MODEL_DIR": "gs://b/model/", "LAUNCHER_GCS_MOUNT": str(tmp_path / "gcs"),
           "AIP_TRAINING_DATA_URI": "gs://b/export/training-*", "AIP_VALIDATION_DATA_URI": "gs://b/export/validation-*"}
    plat = platform.detect([], env)
    assert len(data.load_examples(plat.channels["train"])) == 30
    assert len(data.load_examples(plat.channels["eval"])) == 5
    with pytest.raises(Exception, match="no dataset file matches"):
        data.dataset_files(export / "missing-*")


def test_sagemaker_hyperparameters_as_the_platform_writes_them(tmp_path):
    """The SDKs JSON-encode every value and add keys of their own; a custom image without the training
    toolkit has no SM_HOSTS, only resourceconfig.json."""
    root = tmp_path / "opt-ml"
    (root / "input/config").mkdir(parents=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps({
        "lr_scheduler": '"linear"', "epochs": "2", "packing": "False", "use_rslora": "True", "learning_rate": '"0.0003"',
        "sagemaker_program": '"train.py"', "sagemaker_submit_directory": '"s3://b/src.tar.gz"', "sagemaker_region": '"eu-west-1"',
        "sagemaker_container_log_level": "20", "_tuning_objective_metric": '"eval_loss"',
    }))
    (root / "input/config/resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"], "network_interface_name": "eth0"}))
    plat = platform.detect([], {"SM_ROOT": str(root), "TRAINING_JOB_NAME": "j"})
    config = TrainConfig.from_mapping(plat.hyperparameters)
    assert (config.lr_scheduler, config.epochs, config.packing, config.use_rslora, config.learning_rate) == ("linear", 2, False, True, 3e-4)
    assert plat.world.hosts == ("algo-1", "algo-2") and plat.world.node_rank == 1 and plat.world.nodes == 2
    # A genuinely unknown launcher key is still an error with a hint.
    with pytest.raises(SpecError, match="unknown key 'lora_rank'. Did you mean 'lora_r'"):
        TrainConfig.from_mapping({**plat.hyperparameters, "lora_rank": '"8"'})


def test_the_training_toolkits_arguments_do_not_override_what_sagemaker_wrote(tmp_path):
    """Script mode passes hyperparameters again as --key value after json.loads and str(): a list comes
    as "['q_proj', 'v_proj']" and a boolean as "False"; the file is what counts, and either parses."""
    root = tmp_path / "opt-ml"
    (root / "input/config").mkdir(parents=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps({"target_modules": '["q_proj", "v_proj"]', "packing": "false"}))
    argv = ["--packing", "False", "--target_modules", "['q_proj', 'v_proj']", "--lora_r", "8"]
    plat = platform.detect(argv, {"SAGEMAKER_BASE_DIR": str(root), "SM_MODEL_DIR": str(tmp_path / "model")})
    assert plat.hyperparameters["target_modules"] == '["q_proj", "v_proj"]' and plat.model_dir == tmp_path / "model"
    config = TrainConfig.from_mapping(plat.hyperparameters)
    assert (config.target_modules, config.packing, config.lora_r) == (["q_proj", "v_proj"], False, 8)
    assert TrainConfig.from_mapping({"target_modules": "['q_proj', 'v_proj']"}).target_modules == ["q_proj", "v_proj"]
    assert plat.checkpoint_dir == root / "checkpoints"  # SAGEMAKER_BASE_DIR stands in for /opt/ml


# --- several processes: each platform's environment -> torchrun's arguments ---------------------------
def test_a_sagemaker_instance_with_several_gpus_runs_torchrun_standalone_on_all_of_them(tmp_path):
    env = {"SM_MODEL_DIR": str(tmp_path / "model"), "SM_ROOT": str(tmp_path), "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1",
           "SM_NUM_GPUS": "8"}
    world = platform.detect([], env).world
    assert world.torchrun_args(world.procs_per_node) == ["--standalone", "--nproc-per-node=8"]
    # The launcher asks for fewer processes than the instance has GPUs (compute.accelerator H100:4 on an 8-GPU type).
    world = platform.detect([], {**env, "LAUNCHER_NPROC_PER_NODE": "4"}).world
    assert world.procs_per_node == 4


def test_sagemaker_instances_rendezvous_at_the_first_host(tmp_path):
    env = {"SM_MODEL_DIR": str(tmp_path / "model"), "SM_ROOT": str(tmp_path), "SM_HOSTS": '["algo-1", "algo-2", "algo-3"]',
           "SM_CURRENT_HOST": "algo-2", "SM_NUM_GPUS": "4"}
    world = platform.detect([], env).world
    assert world.torchrun_args(world.procs_per_node) == [
        "--nnodes=3", "--node-rank=1", "--nproc-per-node=4", "--master-addr=algo-1", "--master-port=29500"]
    # A custom image without the training toolkit: resourceconfig.json names the hosts instead.
    (tmp_path / "input/config").mkdir(parents=True)
    (tmp_path / "input/config/resourceconfig.json").write_text(json.dumps({"current_host": "algo-3", "hosts": ["algo-1", "algo-2", "algo-3"]}))
    world = platform.detect([], {k: v for k, v in env.items() if k not in ("SM_HOSTS", "SM_CURRENT_HOST")}).world
    assert world.torchrun_args(4)[:2] == ["--nnodes=3", "--node-rank=2"]


@pytest.mark.parametrize(("task", "node_rank"), [({"type": "workerpool0", "index": 0}, 0), ({"type": "workerpool1", "index": 1}, 2)],
                         ids=["chief", "worker"])
def test_vertex_chief_and_workers_take_their_node_rank_from_cluster_spec(tmp_path, task, node_rank):
    env = {"AIP_MODEL_DIR": "gs://b/model/", "LAUNCHER_GCS_MOUNT": str(tmp_path), "LAUNCHER_NPROC_PER_NODE": "8",
           "CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": ["cmle-chief-0:2222"], "workerpool1": ["w-0:2222", "w-1:2222"]},
                                       "task": task}),
           "MASTER_ADDR": "cmle-chief-0", "MASTER_PORT": "23456", "WORLD_SIZE": "3", "RANK": str(node_rank)}
    world = platform.detect([], env).world
    assert world.torchrun_args(world.procs_per_node) == [
        "--nnodes=3", f"--node-rank={node_rank}", "--nproc-per-node=8", "--master-addr=cmle-chief-0", "--master-port=23456"]
    # Without MASTER_ADDR/MASTER_PORT (a custom image), the chief's address in CLUSTER_SPEC.
    env = {k: v for k, v in env.items() if not k.startswith("MASTER_")}
    assert platform.detect([], env).world.torchrun_args(8)[-2:] == ["--master-addr=cmle-chief-0", "--master-port=2222"]
