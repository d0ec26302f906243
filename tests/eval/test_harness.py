"""lm-eval through the `fmforge` model on local tasks (YAML + JSONL written here):
accuracy and rolling log-likelihood against the model's logits computed directly,
and the same tasks through lm-eval's own `hf` backend on the Hugging Face export."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from fmforge.eval.harness import FmforgeLM, run_harness  # noqa: E402
from fmforge.inference.loading import load_trained  # noqa: E402
from fmforge.tokenizer.load import special_token_ids  # noqa: E402

MC = [
    {"question": "def alpha_1(beta, gamma):\n    return", "choices": ["beta + gamma", "7 7 7", "the river"], "answer": 0},
    {"question": "The river runs past the", "choices": ["old mill", "+ * 9", "return data"], "answer": 0},
    {"question": "def total_3(left, right):\n    return left", "choices": ["+ right * 2", "mill.", "bells"], "answer": 0},
    {"question": "The baker opens his", "choices": ["shop", "index(", "0 0"], "answer": 1},
    {"question": "def count_2(data, item):", "choices": ["return data", "the town", "quiet quiet"], "answer": 2},
]
PPL = [{"text": "def start_4(name, value):\n    return name + value * 3\n"},
       {"text": "The children walk to school along the bank."},
       {"text": "def stop_0(index, total):\n    return index + total * 8\n\n" * 2}]
GEN = [{"prompt": "def alpha_1(beta, gamma):\n    return", "target": " beta"},
       {"prompt": "The river runs", "target": " past"}]


def write_tasks(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("mc", MC), ("ppl", PPL), ("gen", GEN)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    head = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"
    (root / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n" + head.format(path=root / "mc.jsonl") +
        "output_type: multiple_choice\ndoc_to_text: \"{{question}}\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n")
    (root / "tiny_ppl.yaml").write_text(
        "task: tiny_ppl\n" + head.format(path=root / "ppl.jsonl") +
        "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    (root / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n" + head.format(path=root / "gen.jsonl") +
        "output_type: generate_until\ndoc_to_text: \"{{prompt}}\"\ndoc_to_target: \"{{target}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return root


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def logprob(model, ids: list[int], n_cont: int) -> float:
    """log p(last n_cont ids | the ids before), from the model's logits."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0], -1)
    return float(sum(logp[i - 1, ids[i]] for i in range(len(ids) - n_cont, len(ids))))


def test_accuracy_and_rolling_loglikelihood_equal_the_models_logits(trained_run, tasks_dir):
    out = run_harness(trained_run, ["tiny_mc", "tiny_ppl"], include_path=[str(tasks_dir)],
                      batch_size=3, device="cpu", log_samples=True)
    trained = load_trained(trained_run, device="cpu")
    tok, model = trained.tokenizer, trained.model
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    # multiple choice: log p(" " + choice | question), the continuation's ids being
    # those of question + " " + choice after the question's (lm-eval's split)
    correct, by_doc = 0, []
    for doc in MC:
        n_context = len(enc(doc["question"]))
        scores = [logprob(model, enc(doc["question"] + " " + c), len(enc(doc["question"] + " " + c)) - n_context)
                  for c in doc["choices"]]
        by_doc.append(scores)
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    assert out["results"]["tiny_mc"]["acc,none"] == pytest.approx(correct / len(MC))
    for sample in out["samples"]["tiny_mc"]:
        assert [r[0][0] for r in sample["resps"]] == pytest.approx(by_doc[sample["doc_id"]], rel=1e-4)
    # rolling: every token of the text, the first predicted from the prefix token
    # (BOS where the tokenizer declares one, as for the hf backend; else end-of-text), in
    # windows of L predictions, each seeing the L ids before its last target (the
    # third document is longer than the 32-token window)
    total_ll, words, n_bytes = 0.0, 0, 0
    L = model.cfg.seq_len
    prefix = special_token_ids(trained_run.tokenizer, tok)["bos"]
    prefix = trained.eos_id if prefix is None else prefix
    for doc in PPL:
        ids = [prefix] + enc(doc["text"])
        for first in range(1, len(ids), L):
            last = min(first + L - 1, len(ids) - 1)
            total_ll += logprob(model, ids[max(0, last - L): last + 1], last - first + 1)
        words += len(re.split(r"\s+", doc["text"]))  # lm-eval's word count
        n_bytes += len(doc["text"].encode())
    res = out["results"]["tiny_ppl"]
    assert res["bits_per_byte,none"] == pytest.approx(-total_ll / n_bytes / math.log(2), rel=1e-4)
    assert res["word_perplexity,none"] == pytest.approx(math.exp(-total_ll / words), rel=1e-4)
    ev = json.loads(trained_run.eval_json.read_text())
    assert ev["harness"]["12"]["tasks"]["tiny_mc"]["acc,none"] == pytest.approx(correct / len(MC))
    assert "tiny_mc" in out["table"]


def test_the_hf_backend_on_the_export_gives_the_same_numbers(trained_run, tasks_dir, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from fmforge.export.hf import export_hf

    hf_dir = export_hf(trained_run, tmp_path / "hf")
    tasks = ["tiny_mc", "tiny_ppl", "tiny_gen"]
    manager = TaskManager(include_path=[str(tasks_dir)], include_defaults=False)
    ours = simple_evaluate(model=FmforgeLM(run=str(trained_run.root), device="cpu", batch_size=4),
                           tasks=tasks, task_manager=manager, bootstrap_iters=0, log_samples=True)
    theirs = simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},dtype=float32",
                             device="cpu", batch_size=4, tasks=tasks, task_manager=manager,
                             bootstrap_iters=0, log_samples=True)
    for task, metric in [("tiny_mc", "acc,none"), ("tiny_ppl", "word_perplexity,none"),
                         ("tiny_ppl", "bits_per_byte,none"), ("tiny_gen", "exact_match,none")]:
        assert ours["results"][task][metric] == pytest.approx(theirs["results"][task][metric], rel=1e-4), (task, metric)
    for task in tasks:  # request by request: every log-likelihood, every generated text
        a = [s["resps"] for s in ours["samples"][task]]
        b = [s["resps"] for s in theirs["samples"][task]]
        if task == "tiny_gen":
            assert a == b
        else:
            flat = lambda r: [x[0][0] if isinstance(x[0], (list, tuple)) else x[0] for x in r]  # noqa: E731
            for ra, rb in zip(a, b):
                assert flat(ra) == pytest.approx(flat(rb), rel=1e-4, abs=1e-4)


@pytest.mark.slow  # lm-eval indexes its thousands of tasks (~25 s) before it can say a name is unknown
def test_unknown_task_says_what_to_do(trained_run, tasks_dir):
    with pytest.raises(ValueError, match="unknown lm-eval task.*no_such_task.*--include-path"):
        run_harness(trained_run, ["no_such_task"], include_path=[str(tasks_dir)], device="cpu")
