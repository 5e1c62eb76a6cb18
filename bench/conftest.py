"""Versions in the benchmark JSON's machine_info (the report's header reads them)."""
import torch
import triton


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch_version"] = torch.__version__
    machine_info["triton_version"] = triton.__version__
    if torch.cuda.is_available():
        machine_info["cuda_version"] = torch.version.cuda
        machine_info["gpu"] = torch.cuda.get_device_name()
