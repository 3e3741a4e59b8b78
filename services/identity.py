"""Keyed hash of an e-mail address: lets suppressions outlive the contact's erasure
without keeping the address itself."""

from __future__ import annotations

import hashlib
import hmac


def normalize_email(email: str) -> str:
    return email.strip().lower()


def email_hash(email: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), normalize_email(email).encode(), hashlib.sha256).hexdigest()
