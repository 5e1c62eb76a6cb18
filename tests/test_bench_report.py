"""fastint.bench_report: one row per (shape, dtype, mode) with the providers side by side, fastint's
speedups, peak memory, natural row order, and a fallback table for benchmarks written without the
op/provider/mode/dtype/shape keys."""
import json

from fastint.bench_report import main, to_markdown

MIB = 2**20


def bench(op, provider, mode, dtype, shape, median, peak=None):
    return {"group": op, "name": f"test_{op}[{shape}-{dtype}-{provider}-{mode}]",
            "params": {"dtype": "UNSERIALIZABLE[torch.float32]", "provider": provider},
            "stats": {"median": median, "mean": 2 * median, "min": median / 2, "rounds": 5},
            "extra_info": {"op": op, "provider": provider, "mode": mode, "dtype": dtype, "shape": shape,
                           "device": "NVIDIA H200", "peak_memory_bytes": peak}}


REPORT = {
    "machine_info": {"node": "gpu1", "cpu": {"brand_raw": "Xeon"}, "python_version": "3.11.7",
                     "torch_version": "2.13.0"},
    "datetime": "2026-11-23T10:05:00.123456+00:00",
    "benchmarks": [
        bench("field_attention", "deepctr_style", "forward", "float32", "B=4096 M=10", 0.0123),
        bench("field_attention", "eager", "forward", "float32", "B=4096 M=10", 0.004, 3 * MIB),
        bench("field_attention", "compiled", "forward_backward", "float32", "B=16384 M=10", 0.0015),
        bench("field_attention", "fastint", "forward", "float32", "B=4096 M=10", 0.001, MIB),
        bench("field_attention", "compiled", "forward", "float32", "B=4096 M=10", 0.002),
        bench("field_attention", "eager", "forward_backward", "float32", "B=4096 M=10", 0.0105),
        bench("field_attention", "fastint", "forward_backward", "float32", "B=16384 M=10", 0.0005, MIB // 2),
        bench("field_attention", "eager", "forward", "bfloat16", "B=4096 M=10", 0.003),
        bench("field_attention", "fastint", "forward", "bfloat16", "B=4096 M=10", 0.002),
        bench("embedding_bag", "packed_embedding_bag", "forward", "float32", "B=4096 d=16", 1.2346),
        bench("embedding_bag", "fastint", "forward", "float32", "B=4096 d=16", 0.00025),
        bench("embedding_bag", "nn_embedding_bag", "forward", "float32", "B=4096 d=16", 0.0007),
        {"group": "old", "name": "test_train_step[afm-eager]", "params": {"name": "afm"},
         "stats": {"median": 0.25}, "extra_info": {"provider": "eager", "peak_memory_bytes": 4 * MIB}},
        {"group": None, "name": "test_sum", "stats": {"median": 0.0000456}, "extra_info": {}},
    ],
}


def test_report_tables():
    assert to_markdown(REPORT).splitlines() == [
        "machine gpu1 (Xeon), device NVIDIA H200, python 3.11.7, torch 2.13.0, 2026-11-23 10:05 UTC",
        "",
        "## embedding_bag",
        "",
        "| shape | dtype | mode | fastint ms | nn_embedding_bag ms | packed_embedding_bag ms "
        "| x nn_embedding_bag | x packed_embedding_bag |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        "| B=4096 d=16 | float32 | forward | 0.250 | 0.700 | 1235 | 2.80x | 4938.40x |",
        "",
        "## field_attention",
        "",
        "| shape | dtype | mode | fastint ms | eager ms | compiled ms | deepctr_style ms | x eager "
        "| x compiled | x deepctr_style | fastint MiB | eager MiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| B=4096 M=10 | float32 | forward | 1.00 | 4.00 | 2.00 | 12.3 | 4.00x | 2.00x | 12.30x | 1.0 | 3.0 |",
        "| B=4096 M=10 | float32 | forward_backward |  | 10.5 |  |  |  |  |  |  |  |",
        "| B=4096 M=10 | bfloat16 | forward | 2.00 | 3.00 |  |  | 1.50x |  |  |  |  |",
        "| B=16384 M=10 | float32 | forward_backward | 0.500 |  | 1.50 |  |  | 3.00x |  | 0.5 |  |",
        "",
        "## (no group)",
        "",
        "| benchmark | median ms |",            # its peak column is empty: left out
        "| --- | ---: |",
        "| test_sum | 0.0456 |",
        "",
        "## old",
        "",
        "| benchmark | median ms | peak MiB |",
        "| --- | ---: | ---: |",
        "| test_train_step[afm-eager] | 250 | 4.0 |",
    ]


def test_header_without_versions_or_benchmarks():
    assert to_markdown({"datetime": "yesterday"}).splitlines() == [
        "machine ?, yesterday", "", "(no benchmarks in the report)"]


def test_main_prints_the_report(tmp_path, capsys):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(REPORT))
    assert main([str(path)]) == 0
    assert capsys.readouterr().out == to_markdown(REPORT) + "\n"
    assert main([]) == 2 and "usage: python -m fastint.bench_report" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.startswith("bench_report: error: cannot read ")
