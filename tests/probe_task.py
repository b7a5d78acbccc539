"""A small structured generation task written into a folder, for end-to-end CLI tests (--include_path)."""

import textwrap

_YAML = """\
task: {name}
dataset_path: ""
custom_dataset: !function utils.make_docs
test_split: test
output_type: generate_until
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs: {{until: {until}, max_gen_toks: {max_gen_toks}, do_sample: false}}
process_results: !function utils.process_results
metric_list:
  - {{metric: contains, aggregation: mean, higher_is_better: true}}
  - {{metric: attn_entropy, aggregation: mean, higher_is_better: false}}
metadata: {{version: 1.0}}
"""

_UTILS = textwrap.dedent("""\
    import datasets
    from lm_eval_parallel import parallel_prompt
    from lm_eval_parallel.response import attn_entropy_of

    def make_docs(**kwargs):
        rows = [{{"docs": [f"Note {{j}}: value {{i * 7 + j}} is blue.\\n" for j in range({n_items})],
                  "question": f"Value {{i}}?", "answer": "blue"}} for i in range({n_docs})]
        return {{"test": datasets.Dataset.from_list(rows)}}

    def doc_to_text(doc):
        return parallel_prompt(doc["docs"], doc["question"] + "\\nAnswer:")

    def process_results(doc, results):
        return {{"contains": float(doc["answer"] in results[0]), "attn_entropy": attn_entropy_of(results[0])}}
    """)


def write_probe_task(folder, name: str, n_docs: int, n_items: int, max_gen_toks: int, until: str = "[]"):
    """``name``.yaml + utils.py in ``folder``: n_docs documents of n_items marked items each."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(_YAML.format(name=name, until=until, max_gen_toks=max_gen_toks))
    (folder / "utils.py").write_text(_UTILS.format(n_docs=n_docs, n_items=n_items))
    return folder
