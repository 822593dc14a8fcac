#!/usr/bin/env python3
"""Generate synthetic AMD SEV-SNP fixtures under a TEST root (opencvm).

Run from the repository root:

    python3 testdata/synthetic/gen.py

Everything here is signed by keys derived from fixed, PUBLIC seed labels in this
file (seeded RSA prime generation, seeded EC scalars, deterministic RSA-PSS salt,
RFC 6979 ECDSA).  Anybody can recompute the private keys, so these certificates
must never be trusted for anything except tests.  Output is byte-identical on
every run (same base report + same cryptography/Python integer semantics).

Requires: Python >= 3.9, `cryptography` >= 44 (for RFC 6979 ECDSA); tested with 48.
Input: the real Milan v3 report
  $OPENCVM_SNP_VECTORS/routex-client-lua/attestation_spec.lua.milan-v3.report.bin
  (default OPENCVM_SNP_VECTORS=/work/shared/vectors/snp); its SHA-256 is checked.
"""

import datetime as _dt
import hashlib
import hmac
import json
import os
import sys
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID

# AMD VEK certificates have serial number 0 (as the real ones do); cryptography warns.
warnings.filterwarnings("ignore", message=".*serial number which wasn't positive.*")

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.environ.get("OPENCVM_SNP_VECTORS", "/work/shared/vectors/snp")
BASE_REPORT_PATH = os.path.join(
    VECTORS, "routex-client-lua", "attestation_spec.lua.milan-v3.report.bin"
)
BASE_REPORT_SHA256 = "40a2778d02fa56e1d82ab108492919fca56549f4781e38002d61f23cf435fc9f"
SEED = b"opencvm/testdata/synthetic/v1"


def utc(y, m, d):
    return _dt.datetime(y, m, d, tzinfo=_dt.timezone.utc)


# --------------------------------------------------------------------------
# Deterministic randomness
# --------------------------------------------------------------------------
class Drbg:
    """HMAC-SHA256 counter-mode byte stream keyed by SEED || label (test only)."""

    def __init__(self, label):
        self.key = hmac.new(SEED, label.encode(), hashlib.sha256).digest()
        self.ctr = 0
        self.buf = b""

    def read(self, n):
        while len(self.buf) < n:
            self.buf += hmac.new(self.key, self.ctr.to_bytes(8, "big"), hashlib.sha256).digest()
            self.ctr += 1
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def randint_below(self, n):
        nbytes = (n.bit_length() + 7) // 8 + 8
        return int.from_bytes(self.read(nbytes), "big") % n


SMALL_PRIMES = [p for p in range(3, 5000) if all(p % q for q in range(2, int(p ** 0.5) + 1))]


def is_probable_prime(n, drbg, rounds=40):
    if n < 2:
        return False
    for p in SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for _ in range(rounds):
        a = 2 + drbg.randint_below(n - 3)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def gen_prime(bits, drbg, e=65537):
    while True:
        c = int.from_bytes(drbg.read(bits // 8), "big")
        c |= (3 << (bits - 2)) | 1
        if (c - 1) % e == 0:
            continue
        if is_probable_prime(c, drbg):
            return c


def rsa_key(label, bits=4096):
    drbg = Drbg("rsa/" + label)
    e = 65537
    p = gen_prime(bits // 2, drbg)
    q = gen_prime(bits // 2, drbg)
    while q == p:
        q = gen_prime(bits // 2, drbg)
    if p < q:
        p, q = q, p
    n = p * q
    assert n.bit_length() == bits
    d = pow(e, -1, (p - 1) * (q - 1))
    nums = rsa.RSAPrivateNumbers(
        p, q, d,
        rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, n),
    )
    return nums.private_key()


P384_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973


def ec_key(label):
    drbg = Drbg("ec/" + label)
    k = 1 + drbg.randint_below(P384_N - 1)
    return ec.derive_private_key(k, ec.SECP384R1())


# --------------------------------------------------------------------------
# RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48) with a deterministic salt
# --------------------------------------------------------------------------
def mgf1_sha384(seed, length):
    out = b""
    c = 0
    while len(out) < length:
        out += hashlib.sha384(seed + c.to_bytes(4, "big")).digest()
        c += 1
    return out[:length]


def pss_sign(priv, msg, salt_label):
    nums = priv.private_numbers()
    n, d = nums.public_numbers.n, nums.d
    mod_bits = n.bit_length()
    em_bits = mod_bits - 1
    em_len = (em_bits + 7) // 8
    k = (mod_bits + 7) // 8
    h_len, s_len = 48, 48
    m_hash = hashlib.sha384(msg).digest()
    salt = hmac.new(SEED, b"pss-salt/" + salt_label.encode() + m_hash, hashlib.sha384).digest()
    h = hashlib.sha384(b"\x00" * 8 + m_hash + salt).digest()
    db = b"\x00" * (em_len - s_len - h_len - 2) + b"\x01" + salt
    masked = bytes(a ^ b for a, b in zip(db, mgf1_sha384(h, em_len - h_len - 1)))
    zero_bits = 8 * em_len - em_bits
    masked = bytes([masked[0] & (0xFF >> zero_bits)]) + masked[1:]
    em = masked + h + b"\xbc"
    s = pow(int.from_bytes(em, "big"), d, n)
    sig = s.to_bytes(k, "big")
    # independent check with the library implementation
    priv.public_key().verify(sig, msg, PSS_PADDING, hashes.SHA384())
    return sig


PSS_PADDING = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


# --------------------------------------------------------------------------
# Minimal DER
# --------------------------------------------------------------------------
def der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def tlv(tag, content):
    return bytes([tag]) + der_len(len(content)) + content


def read_tlv(buf, off=0):
    tag = buf[off]
    l = buf[off + 1]
    hdr = 2
    if l & 0x80:
        nb = l & 0x7F
        l = int.from_bytes(buf[off + 2: off + 2 + nb], "big")
        hdr += nb
    start = off + hdr
    return tag, start, start + l


def children(content):
    out, off = [], 0
    while off < len(content):
        _, _, end = read_tlv(content, off)
        out.append(content[off:end])
        off = end
    return out


def der_int(n):
    if n == 0:
        return b"\x02\x01\x00"
    return tlv(0x02, n.to_bytes((n.bit_length() + 8) // 8, "big"))


def der_oid(dotted):
    parts = [int(x) for x in dotted.split(".")]
    body = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        enc = [p & 0x7F]
        p >>= 7
        while p:
            enc.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(enc))
    return tlv(0x06, body)


SHA384_ALGID = tlv(0x30, der_oid("2.16.840.1.101.3.4.2.2") + b"\x05\x00")


def pss_algid(trailer):
    params = (
        tlv(0xA0, SHA384_ALGID)
        + tlv(0xA1, tlv(0x30, der_oid("1.2.840.113549.1.1.8") + SHA384_ALGID))
        + tlv(0xA2, der_int(48))
    )
    if trailer:  # explicit (DEFAULT-valued) trailerField, as in AMD's ARK/ASK/older VCEKs
        params += tlv(0xA3, der_int(1))
    return tlv(0x30, der_oid("1.2.840.113549.1.1.10") + tlv(0x30, params))


def pem(der, kind="CERTIFICATE"):
    import base64
    b = base64.b64encode(der).decode()
    lines = [b[i:i + 64] for i in range(0, len(b), 64)]
    return ("-----BEGIN %s-----\n%s\n-----END %s-----\n" % (kind, "\n".join(lines), kind)).encode()


# --------------------------------------------------------------------------
# Certificates and CRLs in AMD's shape
# --------------------------------------------------------------------------
def amd_name(cn):
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def resign(tbs_children, sig_index, issuer_priv, trailer, label):
    """Replace the TBS signature AlgorithmIdentifier, re-sign deterministically."""
    algid = pss_algid(trailer)
    assert tbs_children[sig_index].startswith(b"\x30") and der_oid("1.2.840.113549.1.1.10") in tbs_children[sig_index]
    tbs_children = list(tbs_children)
    tbs_children[sig_index] = algid
    tbs = tlv(0x30, b"".join(tbs_children))
    sig = pss_sign(issuer_priv, tbs, label)
    return tlv(0x30, tbs + algid + tlv(0x03, b"\x00" + sig))


def make_cert(label, subject_cn, issuer_cn, subject_pub, issuer_priv, serial,
              not_before, not_after, exts, trailer):
    b = (x509.CertificateBuilder()
         .subject_name(amd_name(subject_cn))
         .issuer_name(amd_name(issuer_cn))
         .public_key(subject_pub)
         .serial_number(max(serial, 1))
         .not_valid_before(not_before)
         .not_valid_after(not_after))
    for ext, critical in exts:
        b = b.add_extension(ext, critical=critical)
    tmp = b.sign(issuer_priv, hashes.SHA384(), rsa_padding=PSS_PADDING).public_bytes(serialization.Encoding.DER)
    _, s, e = read_tlv(tmp)
    outer = children(tmp[s:e])
    _, ts, te = read_tlv(outer[0])
    tbs = children(outer[0][ts:te])
    assert tbs[0] == b"\xa0\x03\x02\x01\x02"  # v3
    tbs[1] = der_int(serial)
    return resign(tbs, 2, issuer_priv, trailer, "cert/" + label)


def make_crl(label, issuer_cn, issuer_priv, ark_ski, crl_number, this_update, next_update,
             revoked, trailer=False):
    b = (x509.CertificateRevocationListBuilder()
         .issuer_name(amd_name(issuer_cn))
         .last_update(this_update)
         .next_update(next_update)
         .add_extension(x509.AuthorityKeyIdentifier(ark_ski, None, None), critical=False)
         .add_extension(x509.CRLNumber(crl_number), critical=False))
    for serial, when in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    tmp = b.sign(issuer_priv, hashes.SHA384(), rsa_padding=PSS_PADDING).public_bytes(serialization.Encoding.DER)
    _, s, e = read_tlv(tmp)
    outer = children(tmp[s:e])
    _, ts, te = read_tlv(outer[0])
    tbs = children(outer[0][ts:te])
    assert tbs[0] == b"\x02\x01\x01"  # v2
    return resign(tbs, 1, issuer_priv, trailer, "crl/" + label)


def ski_of(pub):
    return x509.SubjectKeyIdentifier.from_public_key(pub).digest


def ark_exts(pub, crl_url):
    return [
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
        (x509.SubjectKeyIdentifier.from_public_key(pub), False),
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), False),
    ]


def ask_exts(pub, ark_pub, crl_url):
    return [
        (x509.SubjectKeyIdentifier.from_public_key(pub), False),
        (x509.AuthorityKeyIdentifier(ski_of(ark_pub), None, None), False),
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(False, False, False, False, False, True, False, False, False), True),
        (x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), False),
    ]


AMD = "1.3.6.1.4.1.3704.1."


def amd_ext(suffix, value):
    return (x509.UnrecognizedExtension(x509.ObjectIdentifier(AMD + suffix), value), False)


def ia5(s):
    return tlv(0x16, s.encode("ascii"))


def milan_vek_exts(product, tcb, hwid=None, csp_id=None):
    """Milan order (trustee test-vcek.der / test-vlek.der): 1,2,3.1,3.2,3.4..3.7,3.3,3.8,(4|5)."""
    e = [
        amd_ext("1", der_int(0)),
        amd_ext("2", ia5(product)),
        amd_ext("3.1", der_int(tcb["bl"])),
        amd_ext("3.2", der_int(tcb["tee"])),
        amd_ext("3.4", der_int(tcb["spl4"])),
        amd_ext("3.5", der_int(tcb["spl5"])),
        amd_ext("3.6", der_int(tcb["spl6"])),
        amd_ext("3.7", der_int(tcb["spl7"])),
        amd_ext("3.3", der_int(tcb["snp"])),
        amd_ext("3.8", der_int(tcb["ucode"])),
    ]
    if hwid is not None:
        e.append(amd_ext("4", hwid))  # 64 raw bytes directly in extnValue
    if csp_id is not None:
        e.append(amd_ext("5", ia5(csp_id)))
    return e


def turin_vek_exts(tcb, hwid):
    """Turin order (virtee vcek_turin.der): 1,2,3.9,3.1,3.2,3.3,3.5,3.6,3.7,3.8,4 (no 3.4)."""
    return [
        amd_ext("1", der_int(1)),
        amd_ext("2", ia5("Turin")),
        amd_ext("3.9", der_int(tcb["fmc"])),
        amd_ext("3.1", der_int(tcb["bl"])),
        amd_ext("3.2", der_int(tcb["tee"])),
        amd_ext("3.3", der_int(tcb["snp"])),
        amd_ext("3.5", der_int(0)),
        amd_ext("3.6", der_int(0)),
        amd_ext("3.7", der_int(0)),
        amd_ext("3.8", der_int(tcb["ucode"])),
        amd_ext("4", hwid),
    ]


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------
SIG_OFF, SIGNED_LEN, REPORT_LEN = 0x2A0, 0x2A0, 0x4A0


def u32(b, o):
    return int.from_bytes(b[o:o + 4], "little")


def u64(b, o):
    return int.from_bytes(b[o:o + 8], "little")


def put_u32(b, o, v):
    b[o:o + 4] = v.to_bytes(4, "little")


def put_u64(b, o, v):
    b[o:o + 8] = v.to_bytes(8, "little")


def sign_report(body, priv):
    body = bytearray(body)
    assert len(body) == REPORT_LEN
    sig = priv.sign(bytes(body[:SIGNED_LEN]), ec.ECDSA(hashes.SHA384(), deterministic_signing=True))
    r, s = decode_dss_signature(sig)
    body[SIG_OFF:REPORT_LEN] = b"\x00" * (REPORT_LEN - SIG_OFF)
    body[0x2A0:0x2A0 + 48] = r.to_bytes(48, "little")
    body[0x2E8:0x2E8 + 48] = s.to_bytes(48, "little")
    return bytes(body)


def verify_report(rep, pub):
    assert len(rep) == REPORT_LEN
    r = int.from_bytes(rep[0x2A0:0x2E8], "little")
    s = int.from_bytes(rep[0x2E8:0x330], "little")
    assert rep[0x2A0 + 48:0x2E8] == b"\x00" * 24 and rep[0x2E8 + 48:0x330] == b"\x00" * 24
    assert rep[0x330:] == b"\x00" * (REPORT_LEN - 0x330)
    pub.verify(encode_dss_signature(r, s), rep[:SIGNED_LEN], ec.ECDSA(hashes.SHA384()))


def milan_tcb(raw):
    b = raw.to_bytes(8, "little")
    return {"bl": b[0], "tee": b[1], "spl4": b[2], "spl5": b[3], "spl6": b[4], "spl7": b[5],
            "snp": b[6], "ucode": b[7]}


def turin_tcb_u64(fmc, bl, tee, snp, ucode):
    return int.from_bytes(bytes([fmc, bl, tee, snp, 0, 0, 0, ucode]), "little")


def turin_tcb(raw):
    b = raw.to_bytes(8, "little")
    return {"fmc": b[0], "bl": b[1], "tee": b[2], "snp": b[3], "ucode": b[7]}


def product_of(rep):
    fam, mod = rep[0x188], rep[0x189]
    if fam == 0x19 and mod <= 0x0F:
        return "Milan"
    if fam == 0x19 and 0x10 <= mod <= 0x1F:
        return "Genoa"
    if fam == 0x1A and mod <= 0x11:
        return "Turin"
    return "unknown"


def report_facts(rep):
    prod = product_of(rep)
    tcbf = turin_tcb if prod == "Turin" else milan_tcb
    ki = u32(rep, 0x48)
    ver = u32(rep, 0x00)
    pol = u64(rep, 0x08)
    f = {
        "version": ver,
        "guest_svn": u32(rep, 0x04),
        "policy": "0x%x" % pol,
        "policy_debug": bool(pol >> 19 & 1),
        "vmpl": u32(rep, 0x30),
        "signature_algo": u32(rep, 0x34),
        "platform_info": "0x%x" % u64(rep, 0x40),
        "key_info": "0x%x" % ki,
        "author_key_en": bool(ki & 1),
        "mask_chip_key": bool(ki >> 1 & 1),
        "signing_key": {0: "vcek", 1: "vlek", 7: "none"}.get(ki >> 2 & 7, "reserved"),
        "cpuid_fam_id": rep[0x188], "cpuid_mod_id": rep[0x189], "cpuid_step": rep[0x18A],
        "product": prod,
        "current_tcb_u64": "0x%016x" % u64(rep, 0x38),
        "reported_tcb_u64": "0x%016x" % u64(rep, 0x180),
        "committed_tcb_u64": "0x%016x" % u64(rep, 0x1E0),
        "launch_tcb_u64": "0x%016x" % u64(rep, 0x1F0),
        "reported_tcb": tcbf(u64(rep, 0x180)),
        "current_tcb": tcbf(u64(rep, 0x38)),
        "chip_id": rep[0x1A0:0x1E0].hex(),
        "measurement": rep[0x90:0xC0].hex(),
        "report_data": rep[0x50:0x90].hex(),
        "launch_mit_vector": ("0x%x" % u64(rep, 0x1F8)) if ver >= 5 else None,
        "current_mit_vector": ("0x%x" % u64(rep, 0x200)) if ver >= 5 else None,
        "sha256": hashlib.sha256(rep).hexdigest(),
    }
    return f


# --------------------------------------------------------------------------
# Independent verification helpers
# --------------------------------------------------------------------------
def load_cert(der):
    c = x509.load_der_x509_certificate(der)
    assert c.public_bytes(serialization.Encoding.DER) == der
    return c


def check_cert_sig(cert, issuer_pub):
    # explicit PSS parameters, independent of what the cert claims
    issuer_pub.verify(cert.signature, cert.tbs_certificate_bytes, PSS_PADDING, hashes.SHA384())
    # and the parameters the certificate itself claims must be the same
    p = cert.signature_algorithm_parameters
    assert isinstance(p, padding.PSS) and cert.signature_hash_algorithm.name == "sha384"


def vek_facts(cert):
    out = {}
    names = {"1": "struct_version", "2": "product_name", "3.1": "bl_spl", "3.2": "tee_spl",
             "3.3": "snp_spl", "3.4": "spl4", "3.5": "spl5", "3.6": "spl6", "3.7": "spl7",
             "3.8": "ucode_spl", "3.9": "fmc_spl", "4": "hwid", "5": "csp_id"}
    order = []
    for ext in cert.extensions:
        oid = ext.oid.dotted_string
        assert oid.startswith(AMD) and not ext.critical, oid
        key = names[oid[len(AMD):]]
        order.append(oid[len(AMD):])
        v = ext.value.value
        if key == "hwid":
            out[key] = v.hex()
        elif key in ("product_name", "csp_id"):
            t, s, e = read_tlv(v)
            assert t == 0x16 and e == len(v)
            out[key] = v[s:e].decode()
        else:
            t, s, e = read_tlv(v)
            assert t == 0x02 and e == len(v)
            out[key] = int.from_bytes(v[s:e], "big")
    out["extension_order"] = order
    return out


def cert_facts(path, der):
    c = load_cert(der)
    f = {
        "path": path,
        "subject_cn": c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
        "issuer_cn": c.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
        "serial": c.serial_number,
        "serial_hex": "0x%x" % c.serial_number,
        "not_before": c.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": c.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "key": "RSA-%d" % c.public_key().key_size if isinstance(c.public_key(), rsa.RSAPublicKey)
        else "EC-P384",
        "pss_trailer_field_explicit": pss_algid(True) in der,
        "sha256_der": hashlib.sha256(der).hexdigest(),
    }
    try:
        f["ski"] = c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        pass
    if f["key"] == "EC-P384":
        f.update(vek_facts(c))
    return f


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def main():
    out_files = {}  # relpath -> bytes

    def put(rel, data):
        out_files[rel] = data

    base = open(BASE_REPORT_PATH, "rb").read()
    if hashlib.sha256(base).hexdigest() != BASE_REPORT_SHA256:
        sys.exit("base report hash mismatch: %s" % BASE_REPORT_PATH)
    base = bytearray(base[:SIGNED_LEN] + b"\x00" * (REPORT_LEN - SIGNED_LEN))
    base_tcb_raw = u64(base, 0x180)
    base_tcb = milan_tcb(base_tcb_raw)
    base_chip = bytes(base[0x1A0:0x1E0])
    assert u32(base, 0) == 3 and u32(base, 0x48) == 0 and product_of(base) == "Milan"

    print("generating keys (seeded; ~1 min of pure-Python prime search)...", flush=True)
    k_ark = rsa_key("ark-milan")
    k_ask = rsa_key("ask-milan")
    k_asvk = rsa_key("asvk-milan")
    k_wrong = rsa_key("crl-wrong-signer")
    k_ark_t = rsa_key("ark-turin")
    k_ask_t = rsa_key("ask-turin")
    e_vcek = ec_key("vcek-milan")
    e_other_chip = ec_key("vcek-milan-other-chip")
    e_other_spls = ec_key("vcek-milan-other-spls")
    e_vlek = ec_key("vlek-milan")
    e_vcek_t = ec_key("vcek-turin")

    AB, AA = utc(2020, 10, 22), utc(2045, 10, 22)
    VB, VA = utc(2023, 1, 1), utc(2030, 1, 1)
    MILAN_CRL = "https://kdsintf.amd.com/vcek/v1/Milan/crl"
    MILAN_VLEK_CRL = "https://kdsintf.amd.com/vlek/v1/Milan/crl"
    TURIN_CRL = "https://kdsintf.amd.com/vcek/v1/Turin/crl"

    # ---- 1. Milan test root
    ark = make_cert("ark-milan", "ARK-Milan", "ARK-Milan", k_ark.public_key(), k_ark, 0x10000,
                    AB, AA, ark_exts(k_ark.public_key(), MILAN_CRL), trailer=True)
    ask = make_cert("ask-milan", "SEV-Milan", "ARK-Milan", k_ask.public_key(), k_ark, 0x10001,
                    AB, AA, ask_exts(k_ask.public_key(), k_ark.public_key(), MILAN_CRL), trailer=True)
    put("ark.pem", pem(ark))
    put("ask.pem", pem(ask))
    put("chain.pem", pem(ask) + pem(ark))
    put("ark.sha256", (hashlib.sha256(ark).hexdigest() + "\n").encode())

    # ---- 2..4, 10: VCEK + reports
    hw = base_chip
    vcek = make_cert("vcek", "SEV-VCEK", "SEV-Milan", e_vcek.public_key(), k_ask, 0, VB, VA,
                     milan_vek_exts("Milan-B0", base_tcb, hwid=hw), trailer=True)
    put("vcek.der", vcek)
    put("report.bin", sign_report(base, e_vcek))

    r = bytearray(base)
    put_u64(r, 0x08, u64(r, 0x08) | (1 << 19))
    put("report-debug.bin", sign_report(r, e_vcek))

    r = bytearray(base)
    put_u32(r, 0x30, 1)
    put("report-vmpl1.bin", sign_report(r, e_vcek))

    r = bytearray(base)
    put_u32(r, 0x00, 5)
    put_u64(r, 0x1F8, 0x3)
    put_u64(r, 0x200, 0x7)
    put("report-v5.bin", sign_report(r, e_vcek))

    # ---- 5. VCEK of another chip
    other_hw = hashlib.sha512(SEED + b"/other-chip-hwid").digest()
    assert other_hw != base_chip
    put("vcek-other-chip.der", make_cert(
        "vcek-other-chip", "SEV-VCEK", "SEV-Milan", e_other_chip.public_key(), k_ask, 0, VB, VA,
        milan_vek_exts("Milan-B0", base_tcb, hwid=other_hw), trailer=True))
    put("report-other-chip.bin", sign_report(base, e_other_chip))

    # ---- 6. VCEK with other SPLs (ucodeSPL + 1)
    other_tcb = dict(base_tcb, ucode=base_tcb["ucode"] + 1)
    put("vcek-other-spls.der", make_cert(
        "vcek-other-spls", "SEV-VCEK", "SEV-Milan", e_other_spls.public_key(), k_ask, 0, VB, VA,
        milan_vek_exts("Milan-B0", other_tcb, hwid=base_chip), trailer=True))
    put("report-other-spls.bin", sign_report(base, e_other_spls))

    # ---- 7. CRLs signed by the test ARK
    ark_ski = ski_of(k_ark.public_key())
    T0, T1 = utc(2026, 1, 1), utc(2027, 1, 1)
    put("crl-empty.der", make_crl("empty", "ARK-Milan", k_ark, ark_ski, 1, T0, T1, []))
    revoked = [(0x10001, utc(2026, 2, 1))]
    put("crl-revokes-ask.der", make_crl("revokes-ask", "ARK-Milan", k_ark, ark_ski, 2, T0, T1, revoked))
    put("crl-revokes-ask-wrong-signer.der",
        make_crl("revokes-ask-wrong-signer", "ARK-Milan", k_wrong, ark_ski, 2, T0, T1, revoked))
    put("crl-expired.der", make_crl("expired", "ARK-Milan", k_ark, ark_ski, 3,
                                    utc(2024, 1, 1), utc(2024, 6, 1), []))

    # ---- 8. VLEK
    asvk = make_cert("asvk-milan", "SEV-VLEK-Milan", "ARK-Milan", k_asvk.public_key(), k_ark, 0x10101,
                     AB, AA, ask_exts(k_asvk.public_key(), k_ark.public_key(), MILAN_VLEK_CRL),
                     trailer=True)
    put("vlek/asvk.pem", pem(asvk))
    put("vlek/chain.pem", pem(asvk) + pem(ark))
    vlek = make_cert("vlek", "SEV-VLEK", "SEV-VLEK-Milan", e_vlek.public_key(), k_asvk, 0,
                     utc(2025, 1, 1), utc(2026, 1, 1),
                     milan_vek_exts("Milan", base_tcb, csp_id="CN=test.opencvm.invalid"),
                     trailer=False)
    put("vlek/vlek.der", vlek)
    r = bytearray(base)
    put_u32(r, 0x48, 1 << 2)          # SIGNING_KEY = 1 (VLEK), MASK_CHIP_KEY = 0 (like AWS)
    r[0x1A0:0x1E0] = b"\x00" * 64     # CHIP_ID masked (MaskChipId)
    put("vlek/report.bin", sign_report(r, e_vlek))
    put_u32(r, 0x48, (1 << 2) | (1 << 1))  # + MASK_CHIP_KEY
    put("vlek/report-mask-chip-key.bin", sign_report(r, e_vlek))

    # ---- 9. Turin
    ark_t = make_cert("ark-turin", "ARK-Turin", "ARK-Turin", k_ark_t.public_key(), k_ark_t, 0x30000,
                      AB, AA, ark_exts(k_ark_t.public_key(), TURIN_CRL), trailer=True)
    ask_t = make_cert("ask-turin", "SEV-Turin", "ARK-Turin", k_ask_t.public_key(), k_ark_t, 0x30001,
                      AB, AA, ask_exts(k_ask_t.public_key(), k_ark_t.public_key(), TURIN_CRL),
                      trailer=True)
    put("turin/chain.pem", pem(ask_t) + pem(ark_t))
    put("turin/ark.sha256", (hashlib.sha256(ark_t).hexdigest() + "\n").encode())
    turin_hw = hashlib.sha256(SEED + b"/turin-hwid").digest()[:8]
    t_tcb = {"fmc": 1, "bl": 2, "tee": 3, "snp": 4, "ucode": 5}
    vcek_t = make_cert("vcek-turin", "SEV-VCEK", "SEV-Turin", e_vcek_t.public_key(), k_ask_t, 0, VB, VA,
                       turin_vek_exts(t_tcb, turin_hw), trailer=False)
    put("turin/vcek.der", vcek_t)
    r = bytearray(base)
    r[0x188], r[0x189], r[0x18A] = 0x1A, 0x02, 0x00
    traw = turin_tcb_u64(**t_tcb)
    for off in (0x38, 0x180, 0x1E0, 0x1F0):
        put_u64(r, off, traw)
    r[0x1A0:0x1E0] = turin_hw + b"\x00" * 56
    put("turin/report.bin", sign_report(r, e_vcek_t))

    # ---- 11. CA-constraint negatives: the same keys as the Milan chain, one
    # constraint broken each, so only that constraint can make the chain fail.
    def without_bc(exts, bc):
        return [(bc, True) if isinstance(e, x509.BasicConstraints) else (e, c) for e, c in exts]

    def with_ku(exts, ku):
        return [(ku, True) if isinstance(e, x509.KeyUsage) else (e, c) for e, c in exts]

    ask_not_ca = make_cert("ask-not-ca", "SEV-Milan", "ARK-Milan", k_ask.public_key(), k_ark, 0x10001,
                           AB, AA, without_bc(ask_exts(k_ask.public_key(), k_ark.public_key(), MILAN_CRL),
                                              x509.BasicConstraints(ca=False, path_length=None)),
                           trailer=True)
    put("constraints/chain-ask-not-ca.pem", pem(ask_not_ca) + pem(ark))
    ku_sign_only = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    ask_no_kcs = make_cert("ask-no-keycertsign", "SEV-Milan", "ARK-Milan", k_ask.public_key(), k_ark,
                           0x10001, AB, AA,
                           with_ku(ask_exts(k_ask.public_key(), k_ark.public_key(), MILAN_CRL), ku_sign_only),
                           trailer=True)
    put("constraints/chain-ask-no-keycertsign.pem", pem(ask_no_kcs) + pem(ark))
    ku_cert_only = x509.KeyUsage(False, False, False, False, False, True, False, False, False)
    ark_no_crl = make_cert("ark-no-crlsign", "ARK-Milan", "ARK-Milan", k_ark.public_key(), k_ark, 0x10000,
                           AB, AA, with_ku(ark_exts(k_ark.public_key(), MILAN_CRL), ku_cert_only),
                           trailer=True)
    put("constraints/chain-ark-no-crlsign.pem", pem(ask) + pem(ark_no_crl))
    put("constraints/ark-no-crlsign.sha256", (hashlib.sha256(ark_no_crl).hexdigest() + "\n").encode())
    vcek_ca = make_cert("vcek-ca", "SEV-VCEK", "SEV-Milan", e_vcek.public_key(), k_ask, 0, VB, VA,
                        milan_vek_exts("Milan-B0", base_tcb, hwid=hw)
                        + [(x509.BasicConstraints(ca=True, path_length=None), True)], trailer=True)
    put("constraints/vcek-ca.der", vcek_ca)

    # ======================================================================
    # Independent verification (re-load everything from the produced bytes)
    # ======================================================================
    def der_of_pem_bundle(data):
        return [c.public_bytes(serialization.Encoding.DER)
                for c in x509.load_pem_x509_certificates(data)]

    rows = []

    def row(name, what, result):
        rows.append((name, what, result))

    c_ask, c_ark = (load_cert(d) for d in der_of_pem_bundle(out_files["chain.pem"]))
    assert c_ark.subject == amd_name("ARK-Milan") and c_ask.subject == amd_name("SEV-Milan")
    check_cert_sig(c_ark, c_ark.public_key()); row("ark.pem", "self-signed PSS", "OK")
    check_cert_sig(c_ask, c_ark.public_key()); row("ask.pem", "signed by ARK", "OK")
    assert der_of_pem_bundle(out_files["ark.pem"]) == [ark]
    assert der_of_pem_bundle(out_files["ask.pem"]) == [ask]
    assert out_files["ark.sha256"].decode().strip() == hashlib.sha256(ark).hexdigest()

    def check_binding(vf, rf, turin=False):
        t = rf["reported_tcb"]
        if turin:
            spl_ok = (vf["fmc_spl"], vf["bl_spl"], vf["tee_spl"], vf["snp_spl"], vf["ucode_spl"]) == \
                     (t["fmc"], t["bl"], t["tee"], t["snp"], t["ucode"])
            hw_ok = rf["chip_id"][:16] == vf["hwid"]
        else:
            spl_ok = (vf["bl_spl"], vf["tee_spl"], vf["snp_spl"], vf["ucode_spl"]) == \
                     (t["bl"], t["tee"], t["snp"], t["ucode"])
            hw_ok = None if "hwid" not in vf else rf["chip_id"] == vf["hwid"]
        return spl_ok, hw_ok

    expected = {"_comment": "Generated by testdata/synthetic/gen.py; values parsed back from the "
                            "written files. TEST root only - never trust.",
                "base_report": {"source": "routex-client-lua/attestation_spec.lua.milan-v3.report.bin",
                                "sha256": BASE_REPORT_SHA256},
                "certs": {}, "crls": {}, "reports": {}}

    for rel, iss in [("ark.pem", c_ark), ("ask.pem", c_ark)]:
        expected["certs"][rel] = cert_facts(rel, der_of_pem_bundle(out_files[rel])[0])

    vek_issuer = {"vcek.der": c_ask, "vcek-other-chip.der": c_ask, "vcek-other-spls.der": c_ask}
    c_asvk, c_ark2 = (load_cert(d) for d in der_of_pem_bundle(out_files["vlek/chain.pem"]))
    assert c_ark2.public_bytes(serialization.Encoding.DER) == ark
    check_cert_sig(c_asvk, c_ark.public_key()); row("vlek/asvk.pem", "signed by ARK", "OK")
    expected["certs"]["vlek/asvk.pem"] = cert_facts("vlek/asvk.pem", der_of_pem_bundle(out_files["vlek/asvk.pem"])[0])
    c_ask_t, c_ark_t = (load_cert(d) for d in der_of_pem_bundle(out_files["turin/chain.pem"]))
    check_cert_sig(c_ark_t, c_ark_t.public_key()); row("turin/chain.pem[1]", "ARK-Turin self-signed", "OK")
    check_cert_sig(c_ask_t, c_ark_t.public_key()); row("turin/chain.pem[0]", "SEV-Turin signed by ARK-Turin", "OK")
    assert out_files["turin/ark.sha256"].decode().strip() == \
        hashlib.sha256(c_ark_t.public_bytes(serialization.Encoding.DER)).hexdigest()
    expected["certs"]["turin/chain.pem#ark"] = cert_facts("turin/chain.pem#1", c_ark_t.public_bytes(serialization.Encoding.DER))
    expected["certs"]["turin/chain.pem#ask"] = cert_facts("turin/chain.pem#0", c_ask_t.public_bytes(serialization.Encoding.DER))
    vek_issuer["vlek/vlek.der"] = c_asvk
    vek_issuer["turin/vcek.der"] = c_ask_t

    vek = {}
    for rel, iss in vek_issuer.items():
        c = load_cert(out_files[rel])
        check_cert_sig(c, iss.public_key())
        assert c.serial_number == 0 and len(c.extensions) in (11, 12)
        assert isinstance(c.public_key(), ec.EllipticCurvePublicKey) and c.public_key().curve.name == "secp384r1"
        vek[rel] = c
        expected["certs"][rel] = cert_facts(rel, out_files[rel])
        row(rel, "signed by " + iss.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "OK")

    # CRLs
    crl_expect = {
        "crl-empty.der": (True, []),
        "crl-revokes-ask.der": (True, [0x10001]),
        "crl-revokes-ask-wrong-signer.der": (False, [0x10001]),
        "crl-expired.der": (True, []),
    }
    for rel, (valid, serials) in crl_expect.items():
        crl = x509.load_der_x509_crl(out_files[rel])
        assert crl.public_bytes(serialization.Encoding.DER) == out_files[rel]
        assert crl.issuer == c_ark.subject
        try:
            c_ark.public_key().verify(crl.signature, crl.tbs_certlist_bytes, PSS_PADDING, hashes.SHA384())
            ok = True
        except Exception:
            ok = False
        assert ok == valid, rel
        assert crl.is_signature_valid(c_ark.public_key()) == valid
        got = [rc.serial_number for rc in crl]
        assert got == serials
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        assert aki == ski_of(c_ark.public_key())
        expected["crls"][rel] = {
            "issuer_cn": "ARK-Milan",
            "crl_number": crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number,
            "this_update": crl.last_update_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "next_update": crl.next_update_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "revoked": [{"serial": rc.serial_number, "serial_hex": "0x%x" % rc.serial_number,
                         "revocation_date": rc.revocation_date_utc.strftime("%Y-%m-%dT%H:%M:%SZ")}
                        for rc in crl],
            "authority_key_id": aki.hex(),
            "signature_valid_under_test_ark": valid,
            "pss_trailer_field_explicit": pss_algid(True) in out_files[rel],
            "sha256_der": hashlib.sha256(out_files[rel]).hexdigest(),
        }
        row(rel, "CRL sig under test ARK", "OK" if valid else "INVALID (intended)")

    # Reports
    rep_expect = [
        # file, signer cert, expected outcome
        ("report.bin", "vcek.der", "accept (binding ok)"),
        ("report-debug.bin", "vcek.der", "reject under default policy: DEBUG allowed (policy bit 19)"),
        ("report-vmpl1.bin", "vcek.der", "reject if VMPL 0 required"),
        ("report-v5.bin", "vcek.der", "accept (v5 with mit vectors)"),
        ("report-other-chip.bin", "vcek-other-chip.der", "reject: hwID != CHIP_ID"),
        ("report-other-spls.bin", "vcek-other-spls.der", "reject: ucodeSPL != REPORTED_TCB.microcode"),
        ("vlek/report.bin", "vlek/vlek.der", "accept if now < 2026-01-01, else reject: VLEK expired"),
        ("vlek/report-mask-chip-key.bin", "vlek/vlek.der", "same as vlek/report.bin but KEY_INFO.MASK_CHIP_KEY=1"),
        ("turin/report.bin", "turin/vcek.der", "accept (Turin binding: hwID == CHIP_ID[0..8])"),
    ]
    for rel, signer, outcome in rep_expect:
        rep = out_files[rel]
        verify_report(rep, vek[signer].public_key())
        # cross-check: must NOT verify with an unrelated key
        other = "vcek-other-chip.der" if signer != "vcek-other-chip.der" else "vcek.der"
        try:
            verify_report(rep, vek[other].public_key())
            raise AssertionError("report verified under the wrong key")
        except Exception as ex:
            if isinstance(ex, AssertionError):
                raise
        rf = report_facts(rep)
        vf = expected["certs"][signer]
        spl_ok, hw_ok = check_binding(vf, rf, turin=rel.startswith("turin/"))
        rf.update({"signed_by": signer, "signature_valid": True, "binding_spl_match": spl_ok,
                   "binding_hwid_match": hw_ok, "expected_outcome": outcome})
        expected["reports"][rel] = rf
        row(rel, "ECDSA sig by " + signer, "OK; spl=%s hwid=%s" % (spl_ok, hw_ok))

    r = expected["reports"]
    assert r["report.bin"]["binding_spl_match"] and r["report.bin"]["binding_hwid_match"]
    assert r["report-debug.bin"]["policy_debug"] and not r["report.bin"]["policy_debug"]
    assert r["report-vmpl1.bin"]["vmpl"] == 1
    assert r["report-other-chip.bin"]["binding_spl_match"] and r["report-other-chip.bin"]["binding_hwid_match"] is False
    assert r["report-other-spls.bin"]["binding_hwid_match"] and r["report-other-spls.bin"]["binding_spl_match"] is False
    assert r["vlek/report.bin"]["signing_key"] == "vlek" and r["vlek/report.bin"]["chip_id"] == "00" * 64
    assert r["vlek/report.bin"]["binding_spl_match"] and r["vlek/report.bin"]["binding_hwid_match"] is None
    assert r["vlek/report-mask-chip-key.bin"]["mask_chip_key"]
    assert r["turin/report.bin"]["product"] == "Turin" and r["turin/report.bin"]["binding_spl_match"] \
        and r["turin/report.bin"]["binding_hwid_match"]
    assert r["report-v5.bin"]["version"] == 5 and r["report-v5.bin"]["launch_mit_vector"] == "0x3" \
        and r["report-v5.bin"]["current_mit_vector"] == "0x7"

    # Shape checks against real AMD certificates, when available
    shape = []
    real_milan = os.path.join(VECTORS, "go-sev-guest", "ask_ark_milan.pem")
    if os.path.exists(real_milan):
        real_ask, real_ark = x509.load_pem_x509_certificates(open(real_milan, "rb").read())
        for mine, real, nm in [(c_ark, real_ark, "ARK"), (c_ask, real_ask, "ASK")]:
            assert mine.subject.public_bytes() == real.subject.public_bytes(), nm
            assert mine.issuer.public_bytes() == real.issuer.public_bytes(), nm
            assert [e.oid for e in mine.extensions] == [e.oid for e in real.extensions], nm
            assert [e.critical for e in mine.extensions] == [e.critical for e in real.extensions], nm
            for e in mine.extensions:
                if e.oid not in (x509.ExtensionOID.SUBJECT_KEY_IDENTIFIER,
                                 x509.ExtensionOID.AUTHORITY_KEY_IDENTIFIER):
                    assert e.value == real.extensions.get_extension_for_oid(e.oid).value, (nm, e.oid)
            rd = real.public_bytes(serialization.Encoding.DER)
            assert pss_algid(True) in rd
            assert mine.serial_number == real.serial_number
        shape.append("ARK/ASK names, extension OIDs/criticality/values, PSS AlgId bytes, serials == real Milan")
    for rel, realp, nm in [("vcek.der", "trustee/snp/test-vcek.der", "VCEK"),
                           ("vlek/vlek.der", "trustee/snp/test-vlek.der", "VLEK"),
                           ("turin/vcek.der", "virtee-sev/vcek_turin.der", "Turin VCEK")]:
        p = os.path.join(VECTORS, realp)
        if not os.path.exists(p):
            continue
        real = open(p, "rb").read()
        rc, mc = x509.load_der_x509_certificate(real), vek[rel]
        assert rc.subject.public_bytes() == mc.subject.public_bytes(), nm
        assert rc.issuer.public_bytes() == mc.issuer.public_bytes(), nm
        assert [e.oid for e in rc.extensions] == [e.oid for e in mc.extensions], nm
        assert [e.critical for e in rc.extensions] == [e.critical for e in mc.extensions], nm
        assert (pss_algid(True) in real) == (pss_algid(True) in out_files[rel]), nm
        assert (pss_algid(False) in real) == (pss_algid(False) in out_files[rel]), nm
        assert rc.serial_number == mc.serial_number == 0
        shape.append("%s names, extension OIDs/order/criticality, PSS AlgId form == %s" % (nm, realp))
    p = os.path.join(VECTORS, "atakit", "milan.crl.der")
    if os.path.exists(p):
        real = x509.load_der_x509_crl(open(p, "rb").read())
        mine = x509.load_der_x509_crl(out_files["crl-empty.der"])
        assert [e.oid for e in real.extensions] == [e.oid for e in mine.extensions]
        assert real.issuer.public_bytes() == mine.issuer.public_bytes()
        assert pss_algid(False) in open(p, "rb").read() and pss_algid(False) in out_files["crl-empty.der"]
        shape.append("CRL issuer, extensions, PSS AlgId form == atakit/milan.crl.der")

    # ---- write
    for rel, data in out_files.items():
        path = os.path.join(HERE, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    expected["files_sha256"] = {rel: hashlib.sha256(d).hexdigest() for rel, d in sorted(out_files.items())}
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=False)
        f.write("\n")

    w = max(len(x[0]) for x in rows)
    print("\n%-*s  %-45s  %s" % (w, "file", "check", "result"))
    print("-" * (w + 70))
    for a, b, c in rows:
        print("%-*s  %-45s  %s" % (w, a, b, c))
    print("\nshape checks vs real AMD data:")
    for s in shape:
        print("  OK  " + s)
    print("\nwrote %d fixture files + expected.json to %s" % (len(out_files), HERE))


if __name__ == "__main__":
    main()
