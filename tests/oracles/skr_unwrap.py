#!/usr/bin/env python3
"""Independent oracle: unwrap a Secure Key Release ciphertext with the Python
`cryptography` package, without any opencvm code.

Usage: skr_unwrap.py PRIVATE_KEY_PKCS8_DER_FILE MECHANISM CIPHERTEXT_FILE

The ciphertext is c1 || c2 (the PKCS#11 CKM_RSA_AES_KEY_WRAP layout): c1 is RSA-OAEP
(no label) of a transient AES key, exactly as long as the RSA modulus, with OAEP and
MGF1 both using SHA-1 (CKM_RSA_AES_KEY_WRAP), SHA-256 (RSA_AES_KEY_WRAP_256) or
SHA-384 (RSA_AES_KEY_WRAP_384); c2 is the RFC 5649 AES key wrap with padding of the
key material under that AES key. Prints the key material as lower-case hex and exits
0, or prints the failure to stderr and exits 1.
"""
import pathlib
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

HASHES = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    key_file, mechanism, ct_file = sys.argv[1:]
    if mechanism not in HASHES:
        print(f"unknown mechanism {mechanism!r}", file=sys.stderr)
        sys.exit(1)
    key = serialization.load_der_private_key(pathlib.Path(key_file).read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        print("not an RSA private key", file=sys.stderr)
        sys.exit(1)
    ct = pathlib.Path(ct_file).read_bytes()
    k = (key.key_size + 7) // 8
    c1, c2 = ct[:k], ct[k:]
    h = HASHES[mechanism]
    aes_key = key.decrypt(c1, padding.OAEP(mgf=padding.MGF1(algorithm=h()), algorithm=h(), label=None))
    if len(aes_key) not in (16, 24, 32):
        print(f"transient AES key is {len(aes_key)} bytes", file=sys.stderr)
        sys.exit(1)
    material = aes_key_unwrap_with_padding(aes_key, c2)
    print(material.hex())


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - any failure is a failed oracle check
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
