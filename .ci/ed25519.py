"""Ed25519 signing (RFC 8032, section 5.1), for test scripts that must upload signed device
keys (`.ci/chaos.py`) where no crypto library is installed. Slow and not constant-time:
for tests only."""

import hashlib

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P


def _add(a, b):
    """Adds two points in extended coordinates (X, Y, Z, T)."""
    e1 = (a[1] - a[0]) * (b[1] - b[0]) % P
    e2 = (a[1] + a[0]) * (b[1] + b[0]) % P
    c = 2 * a[3] * b[3] * D % P
    d = 2 * a[2] * b[2] % P
    e, f, g, h = e2 - e1, d - c, d + c, e2 + e1
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _multiply(scalar, point):
    result = (0, 1, 1, 0)
    while scalar > 0:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _recover_x(y, sign):
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P)
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * pow(2, (P - 1) // 4, P) % P
    if x & 1 != sign:
        x = P - x
    return x


_GY = 4 * pow(5, P - 2, P) % P
_GX = _recover_x(_GY, 0)
BASE = (_GX, _GY, 1, _GX * _GY % P)


def _compress(point):
    z_inverse = pow(point[2], P - 2, P)
    x, y = point[0] * z_inverse % P, point[1] * z_inverse % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _expand(secret):
    digest = hashlib.sha512(secret).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    return scalar, digest[32:]


def _hash_int(data):
    return int.from_bytes(hashlib.sha512(data).digest(), "little")


def public_key(secret):
    """The 32-byte public key of a 32-byte secret."""
    scalar, _ = _expand(secret)
    return _compress(_multiply(scalar, BASE))


def sign(secret, message):
    """The 64-byte signature of `message` by `secret`."""
    scalar, prefix = _expand(secret)
    public = _compress(_multiply(scalar, BASE))
    r = _hash_int(prefix + message) % L
    r_point = _compress(_multiply(r, BASE))
    s = (r + _hash_int(r_point + public + message) % L * scalar) % L
    return r_point + s.to_bytes(32, "little")


if __name__ == "__main__":
    # RFC 8032, 7.1, test 1.
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    assert public_key(secret).hex() == \
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert sign(secret, b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
        "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    print("ed25519: RFC 8032 test 1 passes")
