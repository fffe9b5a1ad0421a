"""fxscale.hw.trtparse: trtexec console / JSON exports, tegrastats lines, trtexec argv, stdlib ONNX reader."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest

from fxscale.hw import trtparse as tp

FIX = Path(__file__).parent / "fixtures"


def log(name: str) -> str:
    return (FIX / "trtexec" / f"{name}.log").read_text()


def export(name: str) -> object:
    return tp.load_json_file(FIX / "trtexec" / f"{name}.json")


def tegra(board: str) -> list[dict]:
    return tp.parse_tegrastats((FIX / "tegrastats" / f"{board}.txt").read_text())


# ------------------------------------------------------------------------------------------ console logs
def test_console_71_multiline_blocks():
    r = tp.parse_trtexec_log(log("trt71"))
    assert (r["dialect"], r["trt_version"], r["device"], r["passed"]) == ("7.1", "7.x", None, True)
    assert r["gpu_compute"] == {"min": 38.455, "max": 39.485, "mean": 38.5563, "median": 38.52,
                                "percentiles": {"99": 39.485}}
    assert r["host_latency"] == {"min": 38.5261, "max": 39.5556, "mean": 38.6294, "median": 38.5949,
                                 "percentiles": {"99": 39.5556}}
    assert r["end_to_end"] == {"min": 38.5384, "max": 39.5679, "mean": 38.6417, "median": 38.6072,
                               "percentiles": {"99": 39.5679}}
    assert r["enqueue"] == {"min": 1.924, "max": 1.936, "median": 1.93, "percentiles": {}}
    assert r["h2d"] is None and r["d2h"] is None and r["cov_percent"] is None
    assert (r["throughput_qps"], r["walltime_s"], r["total_gpu_compute_s"]) == (25.8477, 1.93441, 1.92781)
    assert (r["warmup_queries"], r["warmup_ms"], r["timed_queries"], r["timed_s"]) == (13, 500.0, 50, 1.93441)
    assert len(r["averages"]) == 5
    assert r["averages"][0] == {"runs": 10, "gpu_ms": 38.5213, "host_ms": 38.5944, "end_to_end_ms": 38.6067,
                                "enqueue_ms": 1.9296}
    assert len(r["warnings"]) == 1 and "INT64" in r["warnings"][0]


def test_console_82_summary_with_end_to_end_and_exponent_numbers():
    r = tp.parse_trtexec_log(log("trt82"))
    assert (r["dialect"], r["trt_version"], r["device"], r["passed"]) == ("8.2", "8.2.1", "NVIDIA Tegra X2", True)
    assert r["gpu_compute"] == {"min": 11.775, "max": 12.766, "mean": 11.8742, "median": 11.84,
                                "percentiles": {"99": 12.766}}
    assert r["end_to_end"]["mean"] == 11.9392 and r["host_latency"]["median"] == 11.8915
    assert r["d2h"] == {"min": 1e-05, "max": 0.0013, "mean": 0.0006914, "median": 0.0008,
                        "percentiles": {"99": 0.0013}}
    assert r["h2d"]["mean"] == 0.052 and r["enqueue"]["mean"] == 0.73988
    assert (r["throughput_qps"], r["walltime_s"], r["total_gpu_compute_s"]) == (83.433, 0.599283, 0.593709)
    assert r["averages"] == [{"runs": 50, "gpu_ms": 11.8742, "host_ms": 11.9269, "end_to_end_ms": 11.9392,
                              "enqueue_ms": 0.73988}]
    assert (r["warmup_queries"], r["timed_queries"], r["cov_percent"]) == (42, 50, None)


def test_console_85_percentile_list_and_cov_warning():
    r = tp.parse_trtexec_log(log("trt85"))
    assert (r["dialect"], r["trt_version"], r["device"]) == ("8.5+", "8.5.2", "Xavier")
    assert r["end_to_end"] is None
    assert r["gpu_compute"] == {"min": 13.22, "max": 14.47, "mean": 13.511, "median": 13.47,
                                "percentiles": {"90": 13.72, "95": 13.72, "99": 14.47}}
    assert r["host_latency"]["percentiles"] == {"90": 13.8478, "95": 13.8493, "99": 14.5973}
    assert r["cov_percent"] == 1.74316
    assert any(w.startswith("* GPU compute time is unstable") for w in r["warnings"])
    assert r["averages"][0] == {"runs": 10, "gpu_ms": 13.49, "host_ms": 13.6173, "end_to_end_ms": None,
                                "enqueue_ms": 0.8604}
    assert len(r["averages"]) == 5 and r["throughput_qps"] == 73.0081


def test_console_lines_without_prefix_and_verbose_explanations():
    text = "\n".join([
        "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=m.onnx",
        "GPU Compute Time: min = 1e-05 ms, max = 2.5e+00 ms, mean = 1 ms, median = 1.5 ms, percentile(99.9%) = 2 ms",
        "[01/16/2026-02:17:36] [V] GPU Compute Time: the GPU latency to execute the kernels for a query.",
        "[01/16/2026-02:17:36] [V] Latency: min = 9 ms, max = 9 ms, mean = 9 ms, median = 9 ms",
        "&&&& FAILED TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=m.onnx"])
    r = tp.parse_trtexec_log(text)
    assert r["gpu_compute"] == {"min": 1e-05, "max": 2.5, "mean": 1.0, "median": 1.5, "percentiles": {"99.9": 2.0}}
    assert r["host_latency"] is None and r["trt_version"] == "10.3.0" and r["passed"] is False


@pytest.mark.parametrize("text", [
    "", "hello world\nnot a trtexec log",
    "[01/01/2024-00:00:00] [E] Error[4]: network has no input\n&&&& FAILED TensorRT.trtexec"])
def test_console_without_summary_raises(text):
    with pytest.raises(ValueError, match="no GPU compute summary"):
        tp.parse_trtexec_log(text)


def test_split_log_line():
    assert tp.split_log_line("[03/14/2024-10:04:02] [W] * careful ") == ("W", "* careful")
    assert tp.split_log_line("[03/14/2024-10:04:02] [I]") == ("I", "")
    assert tp.split_log_line("  plain text ") == (None, "plain text")


# --------------------------------------------------------------------------------------------- versions
@pytest.mark.parametrize(("value", "expected"), [
    ("8.2.1", (8, 2, 1)), ("8201", (8, 2, 1)), ("v8502", (8, 5, 2)), (8601, (8, 6, 1)), ("100300", (10, 3, 0)),
    ("v101600", (10, 16, 0)), ("7", (7,)), ([8, 5], (8, 5)), ((7, 1, 3), (7, 1, 3)), (None, None)])
def test_as_version(value, expected):
    assert tp.as_version(value) == expected


def test_as_version_rejects_garbage():
    with pytest.raises(ValueError, match="TensorRT version"):
        tp.as_version("latest")


@pytest.mark.parametrize(("text", "expected"), [
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8201] # trtexec --help", (8, 2, 1)),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v101600] [b31] # trtexec --help", (10, 16, 0)),
    ("&&&& RUNNING TensorRT.trtexec # ./trtexec --help", (7,)),
    ("&&&& RUNNING TensorRT.trtexec [TensorRT v8201] # x\n[07/14/2023-11:52:09] [I] TensorRT version: 8.2.5",
     (8, 2, 5)),
    ("bash: trtexec: command not found", None)])
def test_parse_trtexec_version(text, expected):
    assert tp.parse_trtexec_version(text) == expected


def test_format_version():
    assert [tp.format_version(v) for v in [(8, 2, 1), (7,), None]] == ["8.2.1", "7.x", None]


# ----------------------------------------------------------------------------------------- exportTimes
def test_export_times_71_drops_warmup_by_ms_and_reads_in_out_keys():
    r = tp.parse_export_times(export("trt71_times"), warmup_ms=500)
    assert (r["format"], r["dropped_warmup"], len(r["computeMs"])) == ("7.1", 13, 50)
    assert r["computeMs"][:2] == [38.559, 38.468] and r["latencyMs"][0] == 38.6311
    assert r["h2dMs"][0] == 0.06 and r["d2hMs"][:3] == [0.0121, 0.0126, 0.0116] and r["endToEndMs"][0] == 38.6434
    assert r["compute"] == {"count": 50, "mean": pytest.approx(38.55626, abs=1e-9), "median": 38.52,
                            "min": 38.455, "max": 39.485}
    assert r["latency"]["median"] == 38.59485
    assert tp.parse_export_times(export("trt71_times"), warmup_runs=13)["computeMs"] == r["computeMs"]


def test_export_times_82_matches_console_summary():
    r = tp.parse_export_times(export("trt82_times"), warmup_ms=500)
    assert (r["format"], r["dropped_warmup"], len(r["computeMs"])) == ("8.2", 42, 50)
    assert r["d2hMs"][0] == 1e-05 and r["endToEndMs"][0] == 11.8803
    assert r["compute"]["mean"] == pytest.approx(11.87418, abs=1e-9)
    console = tp.parse_trtexec_log(log("trt82"))["gpu_compute"]
    assert (r["compute"]["min"], r["compute"]["max"], r["compute"]["median"]) == (
        console["min"], console["max"], console["median"])


def test_export_times_85_has_no_warmup_entries():
    r = tp.parse_export_times(export("trt85_times"))
    assert (r["format"], r["dropped_warmup"], len(r["computeMs"]), r["endToEndMs"]) == ("8.5+", 0, 50, None)
    assert r["compute"]["mean"] == pytest.approx(13.511, abs=1e-9) and r["latency"]["min"] == 13.3453


def test_export_times_override_for_84_format():
    r = tp.parse_export_times(export("trt85_times"), warmup_ms=600, includes_warmup=True)
    assert r["dropped_warmup"] == 7 and len(r["computeMs"]) == 43


@pytest.mark.parametrize(("data", "kwargs", "match"), [
    ("trt82", {}, "includes warm-up iterations"),
    ("trt82", {"warmup_ms": 1e9}, "no iterations left"),
    ('[{"startComputeMs": 1, "latencyMs": 2}]', {}, "'computeMs'"),
    ('{"computeMs": 1}', {}, "non-empty list"),
    ("[]", {}, "non-empty list"),
    ("[{,}]", {}, "not valid JSON")])
def test_export_times_errors(data, kwargs, match):
    source = export(data + "_times") if data.startswith("trt") else data
    with pytest.raises(ValueError, match=match):
        tp.parse_export_times(source, **kwargs)


# ---------------------------------------------------------------------------------------- exportProfile
def test_export_profile():
    r = tp.parse_export_profile(export("trt82_profile"))
    assert r["count"] == 50 and len(r["layers"]) == 15
    assert r["layers"][0] == {"name": "Conv_0 + Relu_1", "timeMs": 61.84, "averageMs": 1.2368,
                              "percentage": 10.0432, "medianMs": None}
    r85 = tp.parse_export_profile(export("trt85_profile"))
    assert r85["layers"][0]["medianMs"] == 0.83381 and r85["layers"][-1]["name"] == "Gemm_47"
    assert sum(layer["percentage"] for layer in r85["layers"]) == pytest.approx(100, abs=1e-3)


def test_export_profile_cpp_nan_and_errors():
    text = '[\n  { "count" : 10 }\n, { "name" : "Conv_0", "timeMs" : 0, "averageMs" : 0, "percentage" : -nan }\n]'
    layer = tp.parse_export_profile(text)["layers"][0]
    assert layer["name"] == "Conv_0" and math.isnan(layer["percentage"])
    with pytest.raises(ValueError, match="count"):
        tp.parse_export_profile("[]")
    with pytest.raises(ValueError, match="lacks name"):
        tp.parse_export_profile('[{"count": 1}, {"timeMs": 1, "averageMs": 1, "percentage": 100}]')


# ------------------------------------------------------------------------------------------- tegrastats
@pytest.mark.parametrize(("board", "rail", "value", "load", "freq", "rule", "board_mw", "time"), [
    ("tx2", "VDD_IN", (7512, 4275), 97, [1300], "VDD_IN", 7512.0, None),
    ("xavier", "GPU", (8236, 4695), 99, [1377], "sum", 8236 + 1542 + 3468 + 0 + 1347 + 3076.0, None),
    ("orin_agx_jp5", "VDD_GPU_SOC", (9587, 5963), 96, [1300, 1300], "sum", 9587 + 1983 + 5540 + 1104.0,
     "05-09-2024 18:42:07"),
    ("orin_nano_jp6", "VDD_IN", (10218, 7734), 99, [612], "VDD_IN", 10218.0, "10-08-2025 04:38:22"),
    ("jp7", "VDD_IN", (11856, 8497), 97, [1300, 1300], "VDD_IN", 11856.0, "11-20-2025 09:15:41")])
def test_tegrastats_boards(board, rail, value, load, freq, rule, board_mw, time):
    sample = tegra(board)[1]
    assert sample["rails"][rail] == value
    assert (sample["gpu_load_pct"], sample["gpu_freq_mhz"], sample["time"]) == (load, freq, time)
    assert tp.board_power_rule(sample) == rule and tp.board_power_mw(sample) == board_mw
    assert not {"RAM", "SWAP", "IRAM", "EMC_FREQ", "GR3D_FREQ"} & set(sample["rails"])


def test_tegrastats_tx2_all_rails_and_no_memory_fields():
    first = tegra("tx2")[0]
    assert first["rails"] == {"VDD_IN": (1038, 1134), "VDD_CPU": (153, 153), "VDD_GPU": (153, 153),
                              "VDD_SOC": (384, 384), "VDD_WIFI": (38, 124), "VDD_DDR": (192, 192)}


def test_tegrastats_nano_pom_rails():
    line = ("RAM 1180/3965MB (lfb 1x2MB) SWAP 149/1024MB (cached 7MB) IRAM 0/252kB(lfb 252kB) CPU [30%@1036,33%@1036] "
            "EMC_FREQ 10%@1600 GR3D_FREQ 0%@76 APE 25 PLL@57C CPU@60.5C POM_5V_IN 4520/4680 POM_5V_GPU 0/0 "
            "POM_5V_CPU 1078/1205")
    sample = tp.parse_tegrastats_line(line)
    assert sample["rails"] == {"POM_5V_IN": (4520, 4680), "POM_5V_GPU": (0, 0), "POM_5V_CPU": (1078, 1205)}
    assert tp.board_power_rule(sample) == "POM_5V_IN" and tp.board_power_mw(sample) == 4520.0


def test_tegrastats_old_gr3d_without_frequency():
    sample = tp.parse_tegrastats_line("RAM 3468/3983MB (lfb 48x4MB) cpu [17%,13%,29%,5%]@408 EMC 1%@408 GR3D 3%")
    assert (sample["gpu_load_pct"], sample["gpu_freq_mhz"], sample["rails"]) == (3, None, {})
    with pytest.raises(ValueError, match="no power rails"):
        tp.board_power_mw(sample)


def test_summarize_power_tx2_timed_window():
    s = tp.summarize_power(tegra("tx2")[1:], latency_ms=11.84)
    assert s["samples"] == 3 and s["power_rule"] == "VDD_IN"
    assert s["board_power_w"] == pytest.approx(7.588, abs=1e-12) and s["board_power_w_max"] == 7.664
    assert s["energy_per_inference_j"] == pytest.approx(7.588 * 11.84 / 1000, abs=1e-12)
    assert s["gpu_load_pct"] == 98.0 and s["rails_mw"]["VDD_GPU"] == pytest.approx((3972 + 4125 + 4049) / 3)
    assert tp.summarize_power(tegra("xavier")[1:])["energy_per_inference_j"] is None


@pytest.mark.parametrize("line", ["hello", "[I] Starting inference", "12345"])
def test_tegrastats_garbage_raises(line):
    with pytest.raises(ValueError, match="not a tegrastats line"):
        tp.parse_tegrastats_line(line)


def test_tegrastats_empty_inputs_raise():
    with pytest.raises(ValueError, match="empty"):
        tp.parse_tegrastats("\n \n")
    with pytest.raises(ValueError, match="no tegrastats samples"):
        tp.summarize_power([])


# ------------------------------------------------------------------------------------------ trtexec argv
def test_command_71_uses_explicit_batch_and_workspace():
    argv = tp.trtexec_command((7,), onnx="m.onnx", shapes={"x": (1, 3, 224, 224)}, precision="fp16",
                              workspace_mib=1024, export_times="t.json", export_profile="p.json")
    assert argv == ["trtexec", "--onnx=m.onnx", "--explicitBatch", "--fp16", "--workspace=1024",
                    "--shapes=x:1x3x224x224", "--warmUp=500", "--iterations=50", "--duration=0", "--avgRuns=50",
                    "--exportTimes=t.json", "--exportProfile=p.json"]


def test_command_82_paper_protocol():
    argv = tp.trtexec_command("8.2.1", onnx="m.onnx", shapes={"input": [1, 3, 32, 32]}, workspace_mib=512,
                              export_times="t.json", export_profile="p.json", save_engine="m.engine",
                              trtexec="/usr/src/tensorrt/bin/trtexec")
    assert argv == ["/usr/src/tensorrt/bin/trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", "--workspace=512",
                    "--shapes=input:1x3x32x32", "--warmUp=500", "--iterations=50", "--duration=0", "--avgRuns=50",
                    "--exportTimes=t.json", "--exportProfile=p.json", "--separateProfileRun"]


def test_command_85_mempool_and_10x_int8():
    argv = tp.trtexec_command("8.5.2", onnx="m.onnx", precision="fp16", workspace_mib=2048, iterations=20,
                              avg_runs=5, warmup_ms=200)
    assert argv == ["trtexec", "--onnx=m.onnx", "--fp16", "--memPoolSize=workspace:2048", "--warmUp=200",
                    "--iterations=20", "--duration=0", "--avgRuns=5"]
    assert "--int8" in tp.trtexec_command((10, 3, 0), onnx="m.onnx", precision="int8")


def test_command_load_engine_power_run():
    argv = tp.trtexec_command((8, 2, 1), load_engine="m.engine", shapes={"x": [1, 3, 8, 8]}, precision="fp16",
                              duration_s=10)
    assert argv == ["trtexec", "--loadEngine=m.engine", "--shapes=x:1x3x8x8", "--warmUp=500", "--iterations=50",
                    "--duration=10", "--avgRuns=50"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"version": None, "onnx": "m.onnx"}, "version is needed"),
    ({"version": "8.2.1"}, "exactly one"),
    ({"version": "8.2.1", "onnx": "m.onnx", "load_engine": "e"}, "exactly one"),
    ({"version": "8.2.1", "onnx": "m.onnx", "precision": "bf16"}, "precision must be one of"),
    ({"version": "11.0.0", "onnx": "m.onnx", "precision": "fp16"}, "strongly typed")])
def test_command_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tp.trtexec_command(**kwargs)


# --------------------------------------------------------------------------------------- ONNX (stdlib)
def _export(path: Path, dynamic: bool) -> None:
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    axes = {"input": {0: "batch", 2: "h", 3: "w"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["y"], dynamic_axes=axes)


def test_onnx_info_static_and_dynamic(tmp_path):
    _export(tmp_path / "s.onnx", dynamic=False)
    _export(tmp_path / "d.onnx", dynamic=True)
    assert tp.onnx_info(tmp_path / "s.onnx") == {"inputs": [("input", [1, 3, 16, 16])], "opset": 13}
    assert tp.onnx_info(tmp_path / "d.onnx")["inputs"] == [("input", ["batch", 3, "h", "w"])]


def test_onnx_info_rejects_non_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff\xff this is not protobuf")
    with pytest.raises(ValueError, match="not a readable ONNX model|not an ONNX model"):
        tp.onnx_info(bad)
