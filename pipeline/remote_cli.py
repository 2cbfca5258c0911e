"""`headswap compile` and `headswap submit`: the pipeline of `headswap run`, on Kubeflow
Pipelines or Vertex AI Pipelines (work in pipeline/kubeflow_runner.py)."""

import dataclasses
import json
import os
import sys

from headswap.pipeline import flags


def register(commands):
  compile_parser = commands.add_parser(
      "compile", help="compile the pipeline for Vertex AI Pipelines or Kubeflow Pipelines v2",
      description="Compiles the pipeline `headswap run` would run, every step in --image. "
                  "--data (a gs:// folder, or a path mounted at the same place here and in "
                  "the containers) is listed here for its classes and layout.")
  # Every flag of `headswap run` but its --output: here that names the compiled pipeline.
  flags.add_pipeline_arguments(compile_parser, output=False)
  compile_parser.add_argument("--target", choices=("vertex", "kubeflow"), default="vertex")
  compile_parser.add_argument("--output", required=True,
                              help="the compiled pipeline: a Vertex PipelineJob (.json) or a "
                                   "Kubeflow PipelineSpec (.yaml)")
  compile_parser.add_argument("--pipeline-root", required=True,
                              help="where the steps write artifacts, e.g. gs://BUCKET/headswap")
  compile_parser.add_argument("--image", required=True,
                              help="the component image (see the Dockerfile)")
  compile_parser.add_argument("--serving-dir",
                              help="the Pusher's target (default: PIPELINE_ROOT/serving/NAME)")
  jobs = compile_parser.add_argument_group(
      "Vertex AI training jobs (--target vertex): Tuner and Trainer on their own machines")
  jobs.add_argument("--vertex-jobs", action="store_true",
                    help="run the Tuner and the Trainer as Vertex AI custom training jobs")
  jobs.add_argument("--project", help="Google Cloud project of the jobs")
  jobs.add_argument("--region", help="Vertex AI region of the jobs, e.g. us-central1")
  jobs.add_argument("--machine-type", default="n1-standard-8")
  jobs.add_argument("--accelerator-type", help="e.g. NVIDIA_TESLA_T4 (default: none)")
  jobs.add_argument("--accelerator-count", type=int, default=1)
  jobs.add_argument("--service-account",
                    help="the identity the jobs run as: give the one `headswap submit` gets")
  jobs.add_argument("--workers", type=int, default=1,
                    help="Trainer replicas; more than 1 trains under MultiWorkerMirroredStrategy")
  compile_parser.set_defaults(func=compile_main)

  submit_parser = commands.add_parser(
      "submit", help="submit a compiled pipeline to Vertex AI Pipelines")
  submit_parser.add_argument("--spec", required=True, help="the file `headswap compile` wrote")
  submit_parser.add_argument("--project", required=True)
  submit_parser.add_argument("--region", required=True, help="e.g. us-central1")
  submit_parser.add_argument("--pipeline-root", help="overrides the compiled pipeline root")
  submit_parser.add_argument("--service-account", help="the identity the pipeline runs as")
  submit_parser.add_argument("--display-name", help="default: the spec's file name")
  submit_parser.set_defaults(func=submit_main)


def compile_main(args):
  from headswap.pipeline import kubeflow_runner  # pylint: disable=import-outside-toplevel

  try:
    config = flags.pipeline_config(args, "all")
    config = dataclasses.replace(
        config, root=args.pipeline_root, vertex_training=_vertex_training(args),
        serving_dir=args.serving_dir or os.path.join(args.pipeline_root, "serving", config.name))
    spec = kubeflow_runner.compile_spec(config, args.image, args.output, args.target,
                                        args.beam_args.split())
  except ValueError as error:  # also sources.IngestError: a layout mistake in --data
    sys.exit(f"headswap compile: {error}")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  tasks = (spec.get("pipelineSpec") or spec)["root"]["dag"]["tasks"]
  print(json.dumps({"output": args.output, "target": args.target,
                    "bytes": tf.io.gfile.stat(args.output).length, "components": sorted(tasks)},
                   indent=2))


def _vertex_training(args):
  if not args.vertex_jobs:
    return None
  if not (args.project and args.region):
    raise ValueError("--vertex-jobs needs --project and --region")
  from headswap.pipeline.vertex_training import VertexTraining  # pylint: disable=import-outside-toplevel
  return VertexTraining(project=args.project, region=args.region, image=args.image,
                        machine_type=args.machine_type, accelerator_type=args.accelerator_type,
                        accelerator_count=args.accelerator_count, workers=args.workers,
                        service_account=args.service_account)


def submit_main(args):
  from headswap.pipeline import kubeflow_runner  # pylint: disable=import-outside-toplevel

  try:
    name = kubeflow_runner.submit(args.spec, args.project, args.region, args.pipeline_root,
                                  args.service_account, args.display_name)
  except kubeflow_runner.SubmitError as error:
    sys.exit(f"headswap submit: {error}")
  print(f"submitted: {name}")
  print(f"follow it at https://console.cloud.google.com/vertex-ai/locations/{args.region}/"
        f"pipelines/runs/{name.rsplit('/', 1)[-1]}?project={args.project}")
