"""Which tf.distribute strategy the Trainer builds and trains under."""

import json
import logging
import os

import tensorflow as tf

log = logging.getLogger("headswap")


def configure_cpu_devices(count: int) -> None:
  """Splits the CPU into `count` logical devices, so MirroredStrategy can mirror over them.

  Must run before TensorFlow initialises its devices: in the process that starts the
  pipeline (the CLI, a test), never in run_fn.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])


def worker_count() -> int:
  """How many workers TF_CONFIG names (Vertex and Kubeflow set it for multi-worker jobs)."""
  cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
  return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def task_name() -> str:
  """This worker's TF_CONFIG task, e.g. "worker-1"; "chief-0" when there is none."""
  task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
  return f"{task.get('type', 'chief')}-{task.get('index', 0)}"


def is_chief() -> bool:
  """Whether this process writes the results: the chief, or worker 0 when TF_CONFIG has none."""
  config = json.loads(os.environ.get("TF_CONFIG") or "{}")
  task = config.get("task", {})
  if config.get("cluster", {}).get("chief"):
    return task.get("type") == "chief"
  return task.get("index", 0) == 0


def distribution_strategy(cpu_replicas: int = 1) -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy across the workers of TF_CONFIG, else MirroredStrategy."""
  if worker_count() > 1:
    return KerasMultiWorkerMirroredStrategy()
  return mirrored_strategy(cpu_replicas)


class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
  """MultiWorkerMirroredStrategy as Keras 3's fit calls it (keras-team/keras#20585).

  Keras reduces its first (x, y) batch in one call and scalar metrics along axis 0;
  TensorFlow's reduce fails on both, so each value is reduced alone, scalars over replicas.
  """

  def reduce(self, reduce_op, value, axis):
    reduce = super().reduce

    def reduce_one(per_replica):
      first = (per_replica.values[0]
               if isinstance(per_replica, tf.distribute.DistributedValues) else per_replica)
      return reduce(reduce_op, per_replica, axis if first.shape.rank else None)

    return tf.nest.map_structure(reduce_one, value)


def mirrored_strategy(cpu_replicas: int = 1) -> tf.distribute.MirroredStrategy:
  """All GPUs if there are any, else `cpu_replicas` logical CPU devices.

  On 2 CPU cores one replica trained faster than two (13.9 s vs 25.7 s per fit), hence
  the default of 1; more replicas are for tests and for machines with many cores.
  """
  gpus = tf.config.list_logical_devices("GPU")
  if gpus:
    return tf.distribute.MirroredStrategy([device.name for device in gpus])
  cpus = tf.config.list_logical_devices("CPU")
  if cpu_replicas > len(cpus):
    log.warning("asked for %d CPU replicas but TensorFlow has %d logical CPU devices; "
                "use --cpu-replicas on the command line (it configures them before "
                "TensorFlow starts)", cpu_replicas, len(cpus))
  return tf.distribute.MirroredStrategy([device.name for device in cpus[:max(cpu_replicas, 1)]])
