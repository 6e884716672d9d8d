"""pipeline.config.load_config, KafkaConfig options and SecretRef."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from schemas.config import (
    InternalEmailPolicy,
    KafkaConfig,
    SecretRef,
    TidingsConfig,
)

SECRET = "s3cr3t-Hunter2-value"


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./tidings.toml from the repository leaks into a test."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def write(tmp_path: Path, text: str, name: str = "tidings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- load_config ----------------------------------------------------------------


def test_defaults_without_a_file_or_environment() -> None:
    config = load_config(None, {})
    assert config == TidingsConfig()
    assert config.topic_prefix == "tidings."
    assert config.kafka.bootstrap_servers == []
    assert config.kafka.embedded is True
    assert config.processors.correlation.token_prefix == "CRM"
    assert config.processors.internal_email == InternalEmailPolicy.ONE


def test_tidings_toml_in_the_working_directory_is_read() -> None:
    Path("tidings.toml").write_text('log_level = "debug"\n', encoding="utf-8")
    assert load_config(None, {}).log_level == "debug"


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
data_dir = "/var/lib/tidings"
topic_prefix = "acme."

[kafka]
bootstrap_servers = ["k1:9092", "k2:9092"]
partitions = 12
idempotence = false

[processors]
internal_email = "two"
late_correlation_window_s = 60

[processors.correlation]
token_prefix = "ACME"
earlier_token_prefixes = ["CRM"]

[clickhouse]
dsn = "clickhouse://ch:8123/tidings"
password = { env = "CH_PASSWORD" }
""",
    )
    config = load_config(path, {})
    assert config.data_dir == "/var/lib/tidings"
    assert config.topic_prefix == "acme."
    assert config.kafka.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert config.kafka.partitions == 12
    assert config.kafka.idempotence is False
    assert config.processors.internal_email == InternalEmailPolicy.TWO
    assert config.processors.late_correlation_window_s == 60.0
    assert config.processors.correlation.token_prefix == "ACME"
    assert config.processors.correlation.earlier_token_prefixes == ["CRM"]
    assert config.clickhouse.dsn == "clickhouse://ch:8123/tidings"
    assert config.clickhouse.password == SecretRef(env="CH_PASSWORD")
    assert config.sinks == TidingsConfig().sinks  # untouched sections keep defaults


def test_env_overrides_nested_fields() -> None:
    config = load_config(
        None,
        {
            "TIDINGS_DATA_DIR": "/data",
            "TIDINGS_KAFKA__CLIENT_ID": "worker-7",
            "TIDINGS_PROCESSORS__CORRELATION__TOKEN_PREFIX": "ACME",
        },
    )
    assert config.data_dir == "/data"
    assert config.kafka.client_id == "worker-7"
    assert config.processors.correlation.token_prefix == "ACME"


def test_env_list_from_commas() -> None:
    config = load_config(
        None,
        {
            "TIDINGS_KAFKA__BOOTSTRAP_SERVERS": "a:9092, b:9092,,",
            "TIDINGS_PROCESSORS__CORRELATION__EARLIER_TOKEN_PREFIXES": "OLD",
        },
    )
    assert config.kafka.bootstrap_servers == ["a:9092", "b:9092"]
    assert config.processors.correlation.earlier_token_prefixes == ["OLD"]


def test_env_empty_list() -> None:
    config = load_config(None, {"TIDINGS_KAFKA__BOOTSTRAP_SERVERS": ""})
    assert config.kafka.bootstrap_servers == []


@pytest.mark.parametrize(
    ("value", "expected"), [("false", False), ("true", True), ("0", False), ("1", True)]
)
def test_env_bool_conversion(value: str, expected: bool) -> None:
    config = load_config(None, {"TIDINGS_PROCESSORS__PROCESS_ONLY_APPROVED": value})
    assert config.processors.process_only_approved is expected


def test_env_int_and_float_conversion() -> None:
    config = load_config(
        None,
        {
            "TIDINGS_KAFKA__PARTITIONS": "16",
            "TIDINGS_PROCESSORS__LATE_CORRELATION_WINDOW_S": "60.5",
            "TIDINGS_SINKS__BATCH_MAX_AGE_S": "2",
        },
    )
    assert config.kafka.partitions == 16
    assert config.processors.late_correlation_window_s == 60.5
    assert config.sinks.batch_max_age_s == 2.0


def test_env_enum_conversion() -> None:
    config = load_config(None, {"TIDINGS_PROCESSORS__INTERNAL_EMAIL": "reject"})
    assert config.processors.internal_email == InternalEmailPolicy.REJECT


def test_env_empty_string_is_none_for_optional_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[clickhouse]\ndsn = "clickhouse://x"\n[kafka]\nidempotence = true\n'
        '[connectors]\nworker_name = "w1"\n',
    )
    config = load_config(
        path,
        {
            "TIDINGS_CLICKHOUSE__DSN": "",
            "TIDINGS_KAFKA__IDEMPOTENCE": "",
            "TIDINGS_CONNECTORS__WORKER_NAME": "",
        },
    )
    assert config.clickhouse.dsn is None
    assert config.kafka.idempotence is None
    assert config.connectors.worker_name is None


def test_env_names_are_case_insensitive_after_the_prefix() -> None:
    assert load_config(None, {"TIDINGS_kafka__partitions": "3"}).kafka.partitions == 3


def test_unrelated_environment_is_ignored() -> None:
    config = load_config(
        None,
        {"PATH": "/bin", "TIDINGSX": "1", "KAFKA__PARTITIONS": "9", "TIDINGS_CONFIG": "x.toml"},
    )
    assert config == TidingsConfig()


def test_env_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\npartitions = 8\nclient_id = "from-file"\n')
    config = load_config(path, {"TIDINGS_KAFKA__PARTITIONS": "2"})
    assert config.kafka.partitions == 2
    assert config.kafka.client_id == "from-file"


@pytest.mark.parametrize(
    ("name", "setting"),
    [
        ("TIDINGS_NOPE", "nope"),
        ("TIDINGS_KAFKA__NOPE", "kafka.nope"),
        ("TIDINGS_PROCESSORS__CORRELATION__NOPE", "processors.correlation.nope"),
        ("TIDINGS_DATA_DIR__DEEPER", "data_dir.deeper"),
    ],
)
def test_unknown_env_setting_is_a_config_error_naming_it(name: str, setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {name: "1"})
    assert name in str(caught.value)
    assert setting in str(caught.value)


def test_unknown_file_setting_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka]\nnope = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert "nope" in str(caught.value)
    assert str(path) in str(caught.value)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka\npartitions = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert "not valid TOML" in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_explicit_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", {})


def test_wrong_type_in_env_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"TIDINGS_KAFKA__PARTITIONS": "many"})
    assert "kafka.partitions" in str(caught.value)


def test_wrong_type_in_file_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\npartitions = "many"\n')
    with pytest.raises(ConfigError, match=r"kafka\.partitions"):
        load_config(path, {})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_env_override_of_a_secret_reference() -> None:
    config = load_config(
        None,
        {
            "TIDINGS_KAFKA__SASL_PASSWORD__ENV": "KAFKA_PASSWORD",
            "TIDINGS_CLICKHOUSE__PASSWORD__FILE": "/run/secrets/ch",
        },
    )
    assert config.kafka.sasl_password == SecretRef(env="KAFKA_PASSWORD")
    assert config.clickhouse.password == SecretRef(file="/run/secrets/ch")


def test_env_override_below_a_scalar_file_value_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'kafka = "not a table"\n')
    with pytest.raises(ConfigError):
        load_config(path, {"TIDINGS_KAFKA__PARTITIONS": "3"})


# -- KafkaConfig ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kafka", "idempotent"),
    [
        (KafkaConfig(), False),  # embedded: tansu
        (KafkaConfig(broker="tansu"), False),
        (KafkaConfig(bootstrap_servers=["k:9092"]), True),  # real Kafka by default
        (KafkaConfig(bootstrap_servers=["k:9092"], broker="kafka"), True),
        (KafkaConfig(bootstrap_servers=["t:9092"], broker="tansu"), False),
        (KafkaConfig(broker="kafka"), True),
        (KafkaConfig(idempotence=True), True),  # explicit wins
        (KafkaConfig(broker="tansu", idempotence=True), True),
        (KafkaConfig(bootstrap_servers=["k:9092"], idempotence=False), False),
    ],
)
def test_producer_idempotence_rules(kafka: KafkaConfig, idempotent: bool) -> None:
    options = kafka.producer_options()
    assert options["enable_idempotence"] is idempotent
    assert options["acks"] == "all"


def test_producer_and_consumer_options() -> None:
    kafka = KafkaConfig(
        bootstrap_servers=["a:9092", "b:9092"], client_id="c", linger_ms=5, max_batch_bytes=100
    )
    producer = kafka.producer_options()
    assert producer["bootstrap_servers"] == "a:9092,b:9092"
    assert producer["client_id"] == "c"
    assert producer["linger_ms"] == 5
    assert producer["max_batch_size"] == 100
    assert producer["max_request_size"] == kafka.max_request_bytes
    assert "sasl_mechanism" not in producer
    consumer = kafka.consumer_options()
    assert consumer["enable_auto_commit"] is False
    assert consumer["auto_offset_reset"] == "earliest"
    assert consumer["fetch_max_wait_ms"] == 500


def test_is_tansu_and_embedded() -> None:
    assert KafkaConfig().embedded and KafkaConfig().is_tansu
    assert not KafkaConfig(bootstrap_servers=["k:9092"]).is_tansu
    assert KafkaConfig(bootstrap_servers=["k:9092"], broker="tansu").is_tansu
    assert not KafkaConfig(broker="kafka").is_tansu


def test_sasl_password_is_resolved_from_its_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_TIDINGS_KAFKA_PW", SECRET)
    kafka = KafkaConfig(
        bootstrap_servers=["k:9093"],
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password=SecretRef(env="TEST_TIDINGS_KAFKA_PW"),
    )
    options = kafka.common_options()
    assert options["sasl_plain_password"] == SECRET
    assert options["sasl_plain_username"] == "svc"
    assert options["security_protocol"] == "SASL_SSL"
    assert SECRET not in repr(kafka)


# -- SecretRef ------------------------------------------------------------------


def test_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_TIDINGS_SECRET", SECRET)
    ref = SecretRef(env="TEST_TIDINGS_SECRET")
    assert ref.resolve() == SECRET
    assert str(ref) == "env:TEST_TIDINGS_SECRET"
    assert SECRET not in repr(ref)


def test_secret_env_wins_over_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEST_TIDINGS_SECRET", "from-env")
    path = write(tmp_path, "from-file\n", "secret")
    assert SecretRef(env="TEST_TIDINGS_SECRET", file=str(path)).resolve() == "from-env"


def test_secret_from_file_is_stripped(tmp_path: Path) -> None:
    path = write(tmp_path, f"  {SECRET}\n\n", "secret")
    ref = SecretRef(file=str(path))
    assert ref.resolve() == SECRET
    assert str(ref) == f"file:{path}"


def test_missing_env_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_TIDINGS_ABSENT", raising=False)
    with pytest.raises(LookupError, match="TEST_TIDINGS_ABSENT"):
        SecretRef(env="TEST_TIDINGS_ABSENT").resolve()


def test_missing_secret_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(LookupError) as caught:
        SecretRef(file=str(path)).resolve()
    assert str(path) in str(caught.value)


def test_secret_file_that_is_a_directory_is_a_lookup_error(tmp_path: Path) -> None:
    with pytest.raises(LookupError) as caught:
        SecretRef(file=str(tmp_path)).resolve()
    assert str(tmp_path) in str(caught.value)


def test_unreadable_secret_file_error_never_contains_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, SECRET, "secret")

    def denied(self: Path, *args: object, **kwargs: object) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(LookupError) as caught:
        SecretRef(file=str(path)).resolve()
    assert str(path) in str(caught.value)
    assert "Permission denied" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


def test_lookup_errors_never_contain_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_TIDINGS_OTHER", SECRET)
    monkeypatch.delenv("TEST_TIDINGS_ABSENT", raising=False)
    for ref in (SecretRef(env="TEST_TIDINGS_ABSENT"), SecretRef(file="/nonexistent/x")):
        with pytest.raises(LookupError) as caught:
            ref.resolve()
        assert SECRET not in str(caught.value)


def test_empty_secret_reference_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="neither"):
        SecretRef().resolve()


def test_secret_ref_rejects_unknown_fields(tmp_path: Path) -> None:
    path = write(tmp_path, '[clickhouse]\npassword = { value = "plain" }\n')
    with pytest.raises(ConfigError, match="value"):
        load_config(path, {})


def test_non_utf8_secret_file_is_a_lookup_error_without_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET.encode() + b"\xff\xfe")
    with pytest.raises(LookupError) as caught:
        SecretRef(file=str(path)).resolve()
    assert str(path) in str(caught.value)
    assert SECRET not in str(caught.value)
