"""Kafka connection security from the settings: every client kind gets the same options."""

from __future__ import annotations

import ssl

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faststream.security import SASLPlaintext, SASLScram512
from pydantic import ValidationError

from shared.bus import broker_security, create_broker
from shared.settings import ServiceSettings


def test_plaintext_by_default_for_development_and_tests() -> None:
    settings = ServiceSettings()
    assert settings.kafka_client_options() == {"security_protocol": "PLAINTEXT"}
    assert broker_security(settings) is None


async def test_sasl_options_reach_every_kind_of_client() -> None:
    settings = ServiceSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
                               kafka_sasl_username="progress", kafka_sasl_password="s3cret")
    options = settings.kafka_client_options()
    assert options["security_protocol"] == "SASL_SSL" and isinstance(options["ssl_context"], ssl.SSLContext)
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "PLAIN", "progress", "s3cret")
    # aiokafka accepts them as they are (the outbox producer passes the same options).
    AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **options)
    AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **options)
    AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1", **options)
    security = broker_security(settings)
    assert isinstance(security, SASLPlaintext) and security.use_ssl
    create_broker(settings)

    scram = ServiceSettings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u")
    assert isinstance(broker_security(scram), SASLScram512)
    assert "ssl_context" not in scram.kafka_client_options()


def test_production_refuses_sasl_without_a_user() -> None:
    with pytest.raises(ValidationError, match="KAFKA_SASL_USERNAME"):
        ServiceSettings(env="production", jwt_secret="x" * 40, internal_token="t" * 40,
                        kafka_security_protocol="SASL_PLAINTEXT")
