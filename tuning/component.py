"""tuner_fn for TFX's Tuner component, and a Tuner that also writes the tuning summary."""

from tfx.components import Tuner as TfxTuner
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx.components.tuner import executor as tfx_tuner_executor
from tfx.components.tuner.component import TunerFnResult
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_component_specs

from headswap.trainer import data
from headswap.trainer.hparams import HParams
from headswap.tuning.space import SearchSpace
from headswap.tuning.summary import summarize_tuner, write_summary
from headswap.tuning.trials import TransferTuner


def tuner_fn(fn_args: FnArgs) -> TunerFnResult:
  config = fn_args.custom_config
  hp = HParams.from_sources(config["hparams"])
  tuner = TransferTuner(fn_args.train_files, fn_args.eval_files,
                        len(data.class_names_of(fn_args.train_files)), hp,
                        SearchSpace(**config.get("search_space", {})),
                        config["feature_cache_dir"], directory=fn_args.working_dir)
  return TunerFnResult(tuner=tuner, fit_kwargs={})


class _Executor(tfx_tuner_executor.Executor):
  """TFX's Tuner executor, plus tuning_summary.json/.txt in the tuner_results artifact."""

  def Do(self, input_dict, output_dict, exec_properties):
    tuner = tfx_tuner_executor.search(input_dict, exec_properties, self._get_tmp_dir())
    tfx_tuner_executor.write_best_hyperparameters(tuner, output_dict)
    write_summary(summarize_tuner(tuner), artifact_utils.get_single_uri(
        output_dict[standard_component_specs.TUNER_RESULTS_KEY]))


class Tuner(TfxTuner):
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(_Executor)
