from __future__ import annotations

import hashlib

import pytest

from gateway import keyformat


def test_generated_key_has_prefix_entropy_and_checksum() -> None:
    raw = keyformat.generate("ks_live")
    prefix, _, body = raw.rpartition("_")
    assert prefix == "ks_live"
    assert len(body) == 36 and body.isalnum()
    assert keyformat.is_well_formed(raw)


def test_keys_are_unique() -> None:
    assert len({keyformat.generate("ks") for _ in range(1000)}) == 1000


@pytest.mark.parametrize("mutate", [
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),   # checksum digit changed
    lambda k: k[:12] + ("x" if k[12] != "x" else "y") + k[13:],  # entropy changed
    lambda k: k[:-1],                                     # too short
    lambda k: k + "a",                                    # too long
    lambda k: k.replace("_", "-"),                        # no separator
    lambda k: "KS_LIVE" + k[7:],                          # upper-case prefix
    lambda k: k[:20] + "!" + k[21:],                      # not base62
    lambda k: "",
])
def test_malformed_or_corrupted_keys_are_rejected(mutate: object) -> None:
    raw = keyformat.generate("ks_live")
    assert not keyformat.is_well_formed(mutate(raw))  # type: ignore[operator]


def test_hash_is_sha256_of_raw_key() -> None:
    raw = keyformat.generate("rg")
    assert keyformat.hash_key(raw) == hashlib.sha256(raw.encode()).digest()


@pytest.mark.parametrize("prefix", ["a", "rg", "ks_live", "a_b_c_d_e_f_g_h_i_j_k_l"])
def test_display_prefix_shows_the_public_prefix_and_4_secret_chars(prefix: str) -> None:
    raw = keyformat.generate(prefix)
    assert keyformat.display_prefix(raw) == raw[:len(prefix) + 5]


def test_display_prefix_of_a_customer_key_shows_4_of_its_16_chars() -> None:
    raw = keyformat.generate_customer_key()
    assert keyformat.display_prefix(raw) == raw[:4]


@pytest.mark.parametrize("prefix", ["", "_a", "a_", "a__b", "Ab", "1a", "a" * 25, "a-b"])
def test_invalid_prefixes_are_refused(prefix: str) -> None:
    assert not keyformat.is_valid_prefix(prefix)
    with pytest.raises(ValueError):
        keyformat.generate(prefix)


def test_new_ids_carry_their_kind() -> None:
    ident = keyformat.new_id("key")
    assert ident.startswith("key_") and len(ident) == 26
