import socket
from pathlib import Path

import pytest

from sidecar.errors import ConfigError, StartupError
from sidecar.identity.endpoint import (
    ENDPOINT_ENV,
    check_socket_path,
    grpc_target,
    resolve_endpoint,
)


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("unix:///run/spire/agent.sock", "unix:///run/spire/agent.sock"),
        ("tcp://127.0.0.1:8081", "127.0.0.1:8081"),
        ("tcp://[::1]:8081", "[::1]:8081"),
    ],
)
def test_valid_endpoints(address: str, target: str) -> None:
    assert grpc_target(address) == target


@pytest.mark.parametrize(
    "address",
    [
        "/run/spire/agent.sock",  # no scheme
        "unix://relative/agent.sock",  # host part instead of absolute path
        "unix:relative.sock",
        "tcp://localhost:8081",  # names are not allowed, only IPs
        "tcp://127.0.0.1",  # no port
        "tcp://127.0.0.1:8081/path",
        "tcp://127.0.0.1:99999",
        "unix:///run/agent.sock?x=1",
        "http://127.0.0.1:8081",
        "",
    ],
)
def test_invalid_endpoints_name_the_field(address: str) -> None:
    with pytest.raises(ConfigError) as err:
        grpc_target(address, field="workload_api")
    assert err.value.path == "workload_api"


def test_config_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, "unix:///from/env.sock")
    assert resolve_endpoint("unix:///from/config.sock") == "unix:///from/config.sock"
    assert resolve_endpoint(None) == "unix:///from/env.sock"


def test_missing_endpoint_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    with pytest.raises(ConfigError, match="SPIFFE_ENDPOINT_SOCKET"):
        resolve_endpoint(None)


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, "tcp://localhost:1")
    with pytest.raises(ConfigError) as err:
        resolve_endpoint(None)
    assert err.value.path == "$SPIFFE_ENDPOINT_SOCKET"


def test_a_socket_not_there_yet_in_an_existing_directory_is_waited_for(tmp_path: Path) -> None:
    # the SPIRE agent may start after the sidecar: not a start-up error
    check_socket_path(f"unix://{tmp_path}/agent.sock")


def test_a_socket_path_that_can_never_work_is_a_startup_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StartupError, match=r"directory .* does not exist"):
        check_socket_path(f"unix://{tmp_path}/nodir/agent.sock")
    with pytest.raises(StartupError, match="is not a unix socket") as caught:
        check_socket_path(f"unix://{tmp_path}/file", field="$SPIFFE_ENDPOINT_SOCKET")
    assert caught.value.path == "$SPIFFE_ENDPOINT_SOCKET"


def test_a_real_socket_and_tcp_targets_pass(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "agent.sock"))
        check_socket_path(f"unix://{tmp_path}/agent.sock")
    check_socket_path("127.0.0.1:8081")
