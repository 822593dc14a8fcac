#!/usr/bin/env python3
"""Writes fuzz seeds shaped like real attest requests (structure only; signatures and
keys are not meant to verify): an AzureGuest body from the trustee az-snp-vtpm vector
and a SevSnpVm body with its report. Run from the repository root."""
import base64, json, pathlib

root = pathlib.Path(".")
v = root / "testdata/snp/trustee/az-snp-vtpm"
ev = json.loads((v / "evidence-v1.json").read_text())
hcl = (v / "evidence-v1.json.hcl-report.bin").read_bytes()
report = hcl[0x20:0x20 + 1184]
size = int.from_bytes(hcl[0x4D0:0x4D4], "little")  # IGVM request data: variable data size
runtime = hcl[0x4D4:0x4D4 + size]
b64 = lambda b: base64.b64encode(b).decode()
u64 = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")
proof = {"SnpReport": u64(report), "VcekCertChain": b64((v / "vcek.pem").read_bytes())}
q = ev["tpm_quote"]
info = {
    "AttestationProtocolVersion": "2.0",
    "ClientPayload": {"nonce": b64(b"n")},
    "IsolationInfo": {"Type": "SevSnp", "Evidence": {"Proof": b64(json.dumps(proof).encode()), "RunTimeData": b64(runtime)}},
    "TcgLogs": b64((root / "testdata/eventlog/tpm2-tools/event-uefivar.bin").read_bytes()),
    "TpmInfo": {"AikPub": b64(b"\0\x04abcd"), "PcrQuote": b64(bytes.fromhex(q["message"])),
                "PcrSignature": b64(bytes.fromhex(q["signature"])), "PcrSet": list(range(24)),
                "PCRs": [{"Index": i, "Digest": b64(bytes.fromhex(d))} for i, d in enumerate(q["pcrs"])]},
}
(root / "testdata/attest/azureguest-request.json").write_text(json.dumps({"AttestationInfo": u64(json.dumps(info).encode())}))
snp = {"report": u64(json.dumps(proof).encode()),
       "runtimeData": {"data": u64(runtime), "dataType": "JSON"}, "nonce": "abc"}
(root / "testdata/attest/sevsnpvm-request.json").write_text(json.dumps(snp))
