"""Names vulture cannot see being used (``tests/test_architecture.py`` runs vulture with this file).

Each entry is used by something outside Python's call graph: a framework calling a hook by name, a YAML
task file naming a function, a dataclass field written to / read from JSON, or an attribute a library reads.
Add a name here only with the reason; anything else vulture reports is dead code: delete it.
"""
# ruff: noqa: B018, F821
# fmt: off

# torch.nn.Module hooks (called by Module.__repr__) and HF attention keyword arguments accepted for signature
extra_repr
max_seqlen
# context-manager protocol arguments
exc
# run_config.json fields: written by training, read back by users and by RunConfig.read (JSON, by name)
dna_vlm_version
trained_from
projector_mode
projector_path
frame_strategy
train_data
# bench JSON fields (every repetition's times, so each ratio and CI can be recomputed from the JSON)
stock_times_ms
dna_times_ms
# attributes read by the tokenizers / transformers / PyAV / torch libraries they are set on
pre_tokenizer
decoder
post_processor
bos_token_id
thread_type
pix_fmt
thread_count
qscale
gop_size
allow_tf32
# lmms-eval: the plugin model's API (called by lmms-eval by name) and its private attributes it reads/patches
_rank
eot_token_id
_UNSET_FILE_MODE
_api
# lmms-eval task YAMLs name these (`!function utils.NAME`, `dataset_no_image`, `lmms_eval_specific_kwargs`)
LocalVideoQATask
dataset_no_image
lmms_eval_specific_kwargs
process_results_generate_blind
process_results_mc_blind
aggregate_sum
aggregate_count
# transformers' Auto classes read the model class's config_class (dna_vlm.runs.export.register_auto_classes)
config_class
# pytest: autouse fixtures and module marks are found by name
_seed
pytestmark
# tests: attributes set on HF configs / PyAV streams (read by those libraries) and lmms-eval request fields
intermediate_size
num_hidden_layers
sample_rate
previous_round_info
# accelerate reads DistributedDataParallelKwargs.find_unused_parameters when it wraps the model in DDP
find_unused_parameters
