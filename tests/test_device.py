"""Threads per run: parallel sweep jobs share the cores; a user's setting that oversubscribes them is warned about."""
import pytest

from metarec.run.device import cpu_count, parallel_jobs, thread_share


def test_parallel_jobs_take_an_equal_share_of_the_cores():
    assert thread_share(None, 1, 16) == (None, None)  # a single run keeps torch's default (every core)
    assert thread_share(None, 2, 2) == (1, None)
    assert thread_share(None, 4, 16) == (4, None)
    assert thread_share(None, 3, 16) == (5, None)
    assert thread_share(None, 8, 2) == (1, None)  # never zero


def test_a_users_setting_stands_and_oversubscription_is_named():
    assert thread_share(1, 2, 2) == (1, None)
    threads, warning = thread_share(2, 2, 2)
    assert threads == 2
    assert "device.threads=2 in 2 parallel jobs asks for 4 threads on 2 cores" in warning
    assert "use device.threads=1" in warning
    assert thread_share(4, 1, 16) == (4, None)


def test_outside_a_sweep_there_is_one_job():
    assert parallel_jobs(cpu_count()) == 1
    assert cpu_count() >= 1


@pytest.mark.parametrize("n_jobs, cpus, jobs", [(2, 2, 2), (4, 2, 2), (-1, 8, 8), (-2, 8, 7)])
def test_joblibs_n_jobs_counts_as_joblib_does(monkeypatch, n_jobs, cpus, jobs):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    launcher = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": n_jobs}
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create({"launcher": launcher})))
    assert parallel_jobs(cpus) == jobs
    launcher["_target_"] = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    assert parallel_jobs(cpus) == 1
