"""Verifies a message's DKIM signature with dkimpy, an implementation independent of
Herald's (lettre's). The public key record is given, not looked up in DNS.

    python tools/dkim_verify.py 'v=DKIM1; k=rsa; p=...' < message.eml

Prints the signature's algorithm and signed headers, and exits 0 if it verifies.
"""
import sys

import dkim


def main() -> int:
    record = sys.argv[1].encode()
    message = sys.stdin.buffer.read()

    def dns(name, timeout=5):
        return record

    d = dkim.DKIM(message)
    ok = d.verify(dnsfunc=dns)
    print("ok" if ok else "fail", d.signature_fields.get(b"a", b"").decode(), d.signature_fields.get(b"h", b"").decode())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
