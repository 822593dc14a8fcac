#!/usr/bin/env python3
"""Independent check of an opencvm attestation token with PyJWT + cryptography.

Usage: verify_jwt.py ISSUER_URL TOKEN_FILE

Fetches ISSUER/.well-known/openid-configuration, then its jwks_uri, picks the key by the
token's kid, checks that the key's x5c certificate carries the same public key, and
verifies the token (signature, exp, nbf, iss). Prints the verified claims as JSON.
"""
import base64
import json
import sys
import urllib.request

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def main():
    issuer, token_file = sys.argv[1], sys.argv[2]
    token = open(token_file).read().strip()
    conf = get(issuer.rstrip("/") + "/.well-known/openid-configuration")
    assert conf["issuer"] == issuer, conf["issuer"]
    jwks = get(conf["jwks_uri"])
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k.get("kid") == kid)
    key = jwt.PyJWK(jwk).key
    cert = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0]))
    spki = lambda k: k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki(cert.public_key()) == spki(key), "x5c certificate does not hold the JWK's key"
    claims = jwt.decode(
        token,
        key=key,
        algorithms=conf["id_token_signing_alg_values_supported"],
        issuer=issuer,
        options={"require": ["exp", "nbf", "iat", "iss", "jti"]},
    )
    print(json.dumps(claims))


if __name__ == "__main__":
    main()
