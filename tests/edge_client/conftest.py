"""Fixtures of the edge client's tests: a minimal in-test coordinator on loopback, the tiny guardian and SLM, local
data with a planted unsafe pair. Helpers that tests import are in edge_helpers.py (a module named `conftest`
would be another folder's when several test folders run in one pytest)."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from edge_helpers import BENIGN, UNSAFE  # noqa: E402
from minimal_coordinator import CoordinatorState, MinimalCoordinator  # noqa: E402


@pytest.fixture
def coordinator():
    with MinimalCoordinator(CoordinatorState(tokens={"token-a", "token-b"})) as server:
        yield server


@pytest.fixture
def no_sleep():
    waits: list[float] = []
    return waits.append


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> dict[str, bytes]:
    """A throwaway CA and a certificate for `localhost` signed by it (PEM bytes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "feddetox test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        "ca": ca.public_bytes(pem),
        "cert": cert.public_bytes(pem),
        "key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    }


# -- real parts: a tiny guardian bundle, a tiny SLM, local data with a planted unsafe pair ---------------


@pytest.fixture(scope="session")
def tiny_bundle(tiny_guardian_bundle: Path) -> Path:
    """A guardian bundle (.pte) of the tiny random BERT, built by the export toolchain (tests/conftest.py)."""
    return tiny_guardian_bundle


@pytest.fixture(scope="session")
def planted(tiny_bundle) -> dict:
    """Local data with one planted unsafe pair, and a threshold that flags exactly that pair.

    The tiny guardian has random weights, so it cannot know what is unsafe: the planted pair is the unsafe
    candidate it scores highest, and the threshold lies between that score and every benign pair's. What
    the tests check is the path from a score to a replaced pair and its counts, not the guardian's accuracy.
    """
    from feddetox.data.records import Conversation, PreferencePair
    from feddetox.guardian import load_guardian

    guardian = load_guardian(tiny_bundle)
    unsafe_scores = guardian.score([Conversation(p, c) for p, c in UNSAFE])
    prompt, chosen = UNSAFE[int(np.argmax(unsafe_scores))]
    top = float(unsafe_scores.max())
    benign_scores = guardian.score([Conversation(p, c) for p, c in BENIGN])
    benign = [pair for pair, score in zip(BENIGN, benign_scores, strict=True) if score < top]
    assert len(benign) >= 6, f"the tiny guardian scores too many benign pairs above {top}"
    below = max(float(s) for s in benign_scores if s < top)
    pairs = [PreferencePair(p, c, "I don't know.") for p, c in benign[:6]]
    unsafe = PreferencePair(prompt, chosen, "I can't help with that.")
    return {
        "threshold": (top + below) / 2,
        "bundle_id": guardian.bundle_id,
        "client_a": pairs[:3] + [unsafe],
        "client_b": pairs[3:6],
        "unsafe": unsafe,
    }


@pytest.fixture(scope="session")
def initial_adapter(tiny_llama_path) -> bytes:
    """Round 0's global adapter for the tiny SLM (PEFT's own initialisation, PEFT key names)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from feddetox.adapters import to_bytes

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    state = get_peft_model_state_dict(model)
    return to_bytes({k: v.detach().float().numpy() for k, v in state.items()})
