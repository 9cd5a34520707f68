/*
 * pycita._native: the per-item hot loops of snapshot export and restore in C.
 *
 * Every function here has a pure-Python reference in pycita (the same
 * results, the same accepted inputs); tests/lib/test_native.py checks them
 * against each other with hypothesis. Callers go through the Python modules
 * (pycita.trie, pycita.snapshot.container), which fall back to the Python
 * code when this module is missing and which turn the ValueError/KeyError
 * raised here into pycita's own errors.
 *
 *   keccak256(data) -> bytes                      Keccak-256 (Ethereum's, padding 0x01)
 *   rlp_decode(data, max_depth) -> bytes | list   strict canonical RLP, as container.decode_rlp
 *   rlp_encode(obj) -> bytes                      RLP of nested lists of bytes and ints < 2**64, as rlp.encode
 *   TrieBuilder(emit=True)                        streaming bulk builder, as trie.build_from_sorted
 *       .feed(pairs) -> [(hash, node_rlp), ...]   nodes that became final
 *       .finish() -> (root_hash, [(hash, node_rlp), ...])
 *   parse_fat(items) -> (tuples, bad)              plain valid fat accounts, as state_format.decode_fat_account
 *   account_rlp(nonce, balance, root, code, abi)  the state trie value, as state_format.account_rlp
 *   decode_account(raw) -> tuple | None           the canonical short form, as state._fast_account
 *   TrieWalker(get, root_hash, prefix=b"")        in-order leaf walk, as trie.Trie.items
 *       .next_batch(n) -> [(key, value), ...]     [] at the end; get(prefix + hash) reads a node
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ keccak-f[1600] */

static const uint64_t KECCAK_RC[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808aULL, 0x8000000080008000ULL,
    0x000000000000808bULL, 0x0000000080000001ULL, 0x8000000080008081ULL, 0x8000000000008009ULL,
    0x000000000000008aULL, 0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000aULL,
    0x000000008000808bULL, 0x800000000000008bULL, 0x8000000000008089ULL, 0x8000000000008003ULL,
    0x8000000000008002ULL, 0x8000000000000080ULL, 0x000000000000800aULL, 0x800000008000000aULL,
    0x8000000080008081ULL, 0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL,
};
/* Lane i = x + 5y. KECCAK_ROT[i]: the rho rotation of lane i; KECCAK_PI[i]: where pi moves lane i,
 * (x, y) -> (y, 2x + 3y mod 5). */
static const int KECCAK_ROT[25] = {0, 1, 62, 28, 27, 36, 44, 6, 55, 20, 3, 10, 43,
                                   25, 39, 41, 45, 15, 21, 8, 18, 2, 61, 56, 14};
static const int KECCAK_PI[25] = {0, 10, 20, 5, 15, 16, 1, 11, 21, 6, 7, 17, 2,
                                  12, 22, 23, 8, 18, 3, 13, 14, 24, 9, 19, 4};

#define ROTL64(x, n) (((x) << (n)) | ((x) >> ((64 - (n)) & 63)))

static void keccak_f(uint64_t s[25]) {
    uint64_t c[5], d[5], b[25];
    for (int round = 0; round < 24; round++) {
#pragma GCC unroll 5
        for (int x = 0; x < 5; x++) c[x] = s[x] ^ s[x + 5] ^ s[x + 10] ^ s[x + 15] ^ s[x + 20];
#pragma GCC unroll 5
        for (int x = 0; x < 5; x++) d[x] = c[(x + 4) % 5] ^ ROTL64(c[(x + 1) % 5], 1);
#pragma GCC unroll 25
        for (int i = 0; i < 25; i++) b[KECCAK_PI[i]] = ROTL64(s[i] ^ d[i % 5], KECCAK_ROT[i]);
#pragma GCC unroll 25
        for (int i = 0; i < 25; i++) {
            int x = i % 5, y = i - x;
            s[i] = b[i] ^ ((~b[y + (x + 1) % 5]) & b[y + (x + 2) % 5]);
        }
        s[0] ^= KECCAK_RC[round];
    }
}

static inline uint64_t load64_le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

#define KECCAK_RATE 136

static void keccak256(const uint8_t *in, size_t len, uint8_t out[32]) {
    uint64_t s[25];
    uint8_t block[KECCAK_RATE];
    memset(s, 0, sizeof s);
    while (len >= KECCAK_RATE) {
        for (int i = 0; i < KECCAK_RATE / 8; i++) s[i] ^= load64_le(in + 8 * i);
        keccak_f(s);
        in += KECCAK_RATE;
        len -= KECCAK_RATE;
    }
    memset(block, 0, sizeof block);
    if (len) memcpy(block, in, len);
    block[len] ^= 0x01;
    block[KECCAK_RATE - 1] ^= 0x80;
    for (int i = 0; i < KECCAK_RATE / 8; i++) s[i] ^= load64_le(block + 8 * i);
    keccak_f(s);
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 8; b++) out[8 * i + b] = (uint8_t)(s[i] >> (8 * b));
}

static PyObject *py_keccak256(PyObject *self, PyObject *arg) {
    Py_buffer view;
    uint8_t out[32];
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (view.len > 4096) {
        Py_BEGIN_ALLOW_THREADS
        keccak256((const uint8_t *)view.buf, (size_t)view.len, out);
        Py_END_ALLOW_THREADS
    } else {
        keccak256((const uint8_t *)view.buf, (size_t)view.len, out);
    }
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

/* ------------------------------------------------------------------ strict RLP decoding */

static PyObject *rlp_fail(const char *what, Py_ssize_t pos) {
    PyErr_Format(PyExc_ValueError, "%s at %zd", what, pos);
    return NULL;
}

/* Reads a long-form length: sets *start and *n, or returns -1 with ValueError set. */
static int rlp_long_length(const uint8_t *d, Py_ssize_t pos, int size_len, Py_ssize_t limit, Py_ssize_t *start,
                           Py_ssize_t *n) {
    *start = pos + 1 + size_len;
    if (*start > limit) { rlp_fail("length truncated", pos); return -1; }
    if (d[pos + 1] == 0) { rlp_fail("length has leading zeros", pos); return -1; }
    if (size_len > 7) { rlp_fail("item runs past its container", pos); return -1; }
    uint64_t v = 0;
    for (int i = 0; i < size_len; i++) v = (v << 8) | d[pos + 1 + i];
    if (v < 56) { rlp_fail("long form for a short item", pos); return -1; }
    if (v > (uint64_t)PY_SSIZE_T_MAX / 2) { rlp_fail("item runs past its container", pos); return -1; }
    *n = (Py_ssize_t)v;
    return 0;
}

static PyObject *rlp_decode_at(const uint8_t *d, Py_ssize_t pos, Py_ssize_t limit, int depth, int max_depth,
                               Py_ssize_t *next) {
    if (pos >= limit) return rlp_fail("item truncated", pos);
    uint8_t b = d[pos];
    Py_ssize_t start, n;
    if (b < 0x80) {
        *next = pos + 1;
        return PyBytes_FromStringAndSize((const char *)d + pos, 1);
    }
    if (b < 0xB8) {
        start = pos + 1;
        n = b - 0x80;
        if (n == 1 && start < limit && d[start] < 0x80) return rlp_fail("single byte encoded as a string", pos);
    } else if (b < 0xC0) {
        if (rlp_long_length(d, pos, b - 0xB7, limit, &start, &n) < 0) return NULL;
    } else {
        if (b < 0xF8) {
            start = pos + 1;
            n = b - 0xC0;
        } else if (rlp_long_length(d, pos, b - 0xF7, limit, &start, &n) < 0) {
            return NULL;
        }
        Py_ssize_t end = start + n;
        if (end > limit) return rlp_fail("list runs past its container", pos);
        if (depth >= max_depth) return rlp_fail("lists nested too deep", pos);
        PyObject *items = PyList_New(0);
        if (items == NULL) return NULL;
        Py_ssize_t p = start;
        while (p < end) {
            PyObject *item = rlp_decode_at(d, p, end, depth + 1, max_depth, &p);
            if (item == NULL || PyList_Append(items, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(items);
                return NULL;
            }
            Py_DECREF(item);
        }
        *next = end;
        return items;
    }
    Py_ssize_t end = start + n;
    if (end > limit) return rlp_fail("string runs past its container", pos);
    *next = end;
    return PyBytes_FromStringAndSize((const char *)d + start, n);
}

static PyObject *py_rlp_decode(PyObject *self, PyObject *args) {
    Py_buffer view;
    int max_depth;
    if (!PyArg_ParseTuple(args, "y*i:rlp_decode", &view, &max_depth)) return NULL;
    Py_ssize_t end = 0;
    PyObject *item = rlp_decode_at((const uint8_t *)view.buf, 0, view.len, 0, max_depth, &end);
    if (item != NULL && end != view.len) {
        Py_DECREF(item);
        item = rlp_fail("trailing bytes after the item", end);
    }
    PyBuffer_Release(&view);
    return item;
}

/* ------------------------------------------------------------------ byte buffer */

typedef struct {
    uint8_t *p;
    Py_ssize_t n, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->n + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra) cap *= 2;
    uint8_t *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) { PyErr_NoMemory(); return -1; }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *data, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    if (n) memcpy(b->p + b->n, data, (size_t)n);
    b->n += n;
    return 0;
}

/* RLP header of a string or list payload of length n (0x80 / 0xC0 base). Returns its length. */
static int rlp_header(uint8_t *out, Py_ssize_t n, uint8_t base) {
    if (n < 56) { out[0] = (uint8_t)(base + n); return 1; }
    int len = 0;
    for (Py_ssize_t v = n; v; v >>= 8) len++;
    out[0] = (uint8_t)(base + 55 + len);
    for (int i = 0; i < len; i++) out[1 + i] = (uint8_t)(n >> (8 * (len - 1 - i)));
    return 1 + len;
}

/* Appends the RLP of the byte string data[0:n]. */
static int buf_put_str(Buf *b, const uint8_t *data, Py_ssize_t n) {
    uint8_t hdr[10];
    if (n == 1 && data[0] < 0x80) return buf_put(b, data, 1);
    int h = rlp_header(hdr, n, 0x80);
    if (buf_put(b, hdr, h) < 0) return -1;
    return buf_put(b, data, n);
}

/* Wraps b->p[from:] (the concatenated items) into a list: the header is inserted before them. */
static int buf_wrap_list(Buf *b, Py_ssize_t from) {
    uint8_t hdr[10];
    Py_ssize_t payload = b->n - from;
    int h = rlp_header(hdr, payload, 0xC0);
    if (buf_reserve(b, h) < 0) return -1;
    memmove(b->p + from + h, b->p + from, (size_t)payload);
    memcpy(b->p + from, hdr, (size_t)h);
    b->n += h;
    return 0;
}

/* Hex-prefix encoding of nibbles[0:n] with the leaf flag or not, as an RLP string, appended. */
static int buf_put_hp(Buf *b, const uint8_t *nib, Py_ssize_t n, int leaf) {
    uint8_t small[40];
    uint8_t *hp = small;
    Py_ssize_t len = n / 2 + 1;
    if (len > (Py_ssize_t)sizeof small) {
        hp = PyMem_Malloc((size_t)len);
        if (hp == NULL) { PyErr_NoMemory(); return -1; }
    }
    Py_ssize_t i = 0;
    if (n & 1) {
        hp[0] = (uint8_t)(((leaf ? 3 : 1) << 4) | nib[0]);
        i = 1;
    } else {
        hp[0] = (uint8_t)((leaf ? 2 : 0) << 4);
    }
    for (Py_ssize_t k = 1; k < len; k++, i += 2) hp[k] = (uint8_t)((nib[i] << 4) | nib[i + 1]);
    int rc = buf_put_str(b, hp, len);
    if (hp != small) PyMem_Free(hp);
    return rc;
}

/* ------------------------------------------------------------------ TrieBuilder */

#define REF_MAX 33  /* an embedded node (< 32 bytes) or 0xa0 + hash */

typedef struct {
    Py_ssize_t depth;
    uint8_t reflen[16];
    uint8_t ref[16][REF_MAX];
    PyObject *value; /* bytes or NULL (empty) */
} Frame;

typedef struct {
    PyObject_HEAD
    int emit;
    int started;
    int finished;
    Frame *stack;
    Py_ssize_t depth, cap;
    PyObject *key, *value;  /* the pending item */
    Py_ssize_t shared_before;
    PyObject *out;          /* list of (hash, rlp) during a call */
    Buf enc, tmp;
} TrieBuilderObject;

static const uint8_t EMPTY_REF = 0x80;

static int tb_push(TrieBuilderObject *t, Py_ssize_t depth) {
    if (t->depth == t->cap) {
        Py_ssize_t cap = t->cap ? t->cap * 2 : 16;
        Frame *s = PyMem_Realloc(t->stack, sizeof(Frame) * (size_t)cap);
        if (s == NULL) { PyErr_NoMemory(); return -1; }
        t->stack = s;
        t->cap = cap;
    }
    Frame *f = &t->stack[t->depth++];
    f->depth = depth;
    for (int i = 0; i < 16; i++) { f->reflen[i] = 1; f->ref[i][0] = EMPTY_REF; }
    f->value = NULL;
    return 0;
}

/* The hash of node[0:n] is emitted as (hash, rlp) when emitting; writes the 32-byte hash. */
static int tb_hash_emit(TrieBuilderObject *t, const uint8_t *node, Py_ssize_t n, uint8_t out[32]) {
    keccak256(node, (size_t)n, out);
    if (!t->emit) return 0;
    PyObject *pair = Py_BuildValue("(y#y#)", (const char *)out, (Py_ssize_t)32, (const char *)node, n);
    if (pair == NULL) return -1;
    int rc = PyList_Append(t->out, pair);
    Py_DECREF(pair);
    return rc;
}

/* Reference of an encoded node: itself when < 32 bytes, else 0xa0 + its hash (emitted). */
static int tb_ref(TrieBuilderObject *t, const uint8_t *node, Py_ssize_t n, uint8_t ref[REF_MAX], uint8_t *reflen) {
    if (n < 32) {
        memcpy(ref, node, (size_t)n);
        *reflen = (uint8_t)n;
        return 0;
    }
    ref[0] = 0xA0;
    *reflen = 33;
    return tb_hash_emit(t, node, n, ref + 1);
}

static int nibbles_of(PyObject *key, uint8_t **nib, Py_ssize_t *n, uint8_t *small, Py_ssize_t small_cap) {
    Py_ssize_t len = PyBytes_GET_SIZE(key);
    const uint8_t *k = (const uint8_t *)PyBytes_AS_STRING(key);
    *n = 2 * len;
    *nib = *n <= small_cap ? small : PyMem_Malloc((size_t)(*n ? *n : 1));
    if (*nib == NULL) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t i = 0; i < len; i++) { (*nib)[2 * i] = k[i] >> 4; (*nib)[2 * i + 1] = k[i] & 15; }
    return 0;
}

/* Leaf RLP of (nib[0:n], value) into t->enc (reset). */
static int tb_enc_leaf(TrieBuilderObject *t, const uint8_t *nib, Py_ssize_t n, PyObject *value) {
    t->enc.n = 0;
    if (buf_put_hp(&t->enc, nib, n, 1) < 0) return -1;
    if (buf_put_str(&t->enc, (const uint8_t *)PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)) < 0) return -1;
    return buf_wrap_list(&t->enc, 0);
}

/* Extension RLP of (nib[0:n], child ref) into buf (reset). */
static int tb_enc_ext(Buf *b, const uint8_t *nib, Py_ssize_t n, const uint8_t *ref, Py_ssize_t reflen) {
    b->n = 0;
    if (buf_put_hp(b, nib, n, 0) < 0) return -1;
    if (buf_put(b, ref, reflen) < 0) return -1;
    return buf_wrap_list(b, 0);
}

/* Branch RLP of the frame into t->enc (reset). */
static int tb_enc_branch(TrieBuilderObject *t, Frame *f) {
    t->enc.n = 0;
    for (int i = 0; i < 16; i++)
        if (buf_put(&t->enc, f->ref[i], f->reflen[i]) < 0) return -1;
    if (f->value == NULL) {
        if (buf_put(&t->enc, &EMPTY_REF, 1) < 0) return -1;
    } else if (buf_put_str(&t->enc, (const uint8_t *)PyBytes_AS_STRING(f->value), PyBytes_GET_SIZE(f->value)) < 0) {
        return -1;
    }
    return buf_wrap_list(&t->enc, 0);
}

/* Finish the open branches deeper than target (see trie.build_from_sorted.close). With target < 0 the root
 * RLP is left in t->enc and *root_done set. */
static int tb_close(TrieBuilderObject *t, const uint8_t *nib, Py_ssize_t target, int *root_done) {
    uint8_t ref[REF_MAX], ref2[REF_MAX];
    uint8_t reflen, reflen2;
    while (t->depth > 0 && t->stack[t->depth - 1].depth > target) {
        Frame *f = &t->stack[t->depth - 1];
        Py_ssize_t depth = f->depth;
        int rc = tb_enc_branch(t, f);
        Py_CLEAR(f->value);
        t->depth--;
        if (rc < 0) return -1;
        Frame *parent;
        if (t->depth > 0 && t->stack[t->depth - 1].depth >= target) {
            parent = &t->stack[t->depth - 1];
        } else if (target >= 0) {
            if (tb_push(t, target) < 0) return -1;
            parent = &t->stack[t->depth - 1];
        } else {
            if (depth) {
                if (tb_ref(t, t->enc.p, t->enc.n, ref, &reflen) < 0) return -1;
                if (tb_enc_ext(&t->enc, nib, depth, ref, reflen) < 0) return -1;
            }
            *root_done = 1;
            return 0;
        }
        if (tb_ref(t, t->enc.p, t->enc.n, ref, &reflen) < 0) return -1;
        Py_ssize_t pd = parent->depth;
        if (depth > pd + 1) {
            if (tb_enc_ext(&t->tmp, nib + pd + 1, depth - pd - 1, ref, reflen) < 0) return -1;
            if (tb_ref(t, t->tmp.p, t->tmp.n, ref2, &reflen2) < 0) return -1;
            memcpy(ref, ref2, reflen2);
            reflen = reflen2;
        }
        memcpy(parent->ref[nib[pd]], ref, reflen);
        parent->reflen[nib[pd]] = reflen;
    }
    return 0;
}

static Py_ssize_t lcp_nibbles(PyObject *a, PyObject *b) {
    Py_ssize_t la = PyBytes_GET_SIZE(a), lb = PyBytes_GET_SIZE(b), n = la < lb ? la : lb;
    const uint8_t *x = (const uint8_t *)PyBytes_AS_STRING(a), *y = (const uint8_t *)PyBytes_AS_STRING(b);
    for (Py_ssize_t i = 0; i < n; i++)
        if (x[i] != y[i]) return 2 * i + ((x[i] >> 4) == (y[i] >> 4) ? 1 : 0);
    return 2 * n;
}

static int bytes_less(PyObject *a, PyObject *b) {
    Py_ssize_t la = PyBytes_GET_SIZE(a), lb = PyBytes_GET_SIZE(b), n = la < lb ? la : lb;
    int c = memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)n);
    return c < 0 || (c == 0 && la < lb);
}

static void value_error_hex(const char *fmt, PyObject *a, PyObject *b) {
    PyObject *ha = PyObject_CallMethod(a, "hex", NULL);
    PyObject *hb = b ? PyObject_CallMethod(b, "hex", NULL) : NULL;
    if (ha != NULL && (b == NULL || hb != NULL)) PyErr_Format(PyExc_ValueError, fmt, ha, hb);
    Py_XDECREF(ha);
    Py_XDECREF(hb);
}

/* Place the pending item (key, value) given the common prefixes with its neighbours (-1: none). With
 * shared_after < 0 it is the last item; *root_done is set when the root RLP is in t->enc. */
static int tb_place(TrieBuilderObject *t, Py_ssize_t shared_after, int *root_done) {
    uint8_t small[128];
    uint8_t *nib;
    Py_ssize_t n;
    uint8_t ref[REF_MAX];
    uint8_t reflen;
    if (nibbles_of(t->key, &nib, &n, small, sizeof small) < 0) return -1;
    int rc = 0;
    if (shared_after > t->shared_before && tb_push(t, shared_after) < 0) { rc = -1; goto done; }
    if (t->depth > 0) {
        Frame *f = &t->stack[t->depth - 1];
        if (shared_after == n) {
            Py_INCREF(t->value);
            Py_XSETREF(f->value, t->value);
        } else {
            Py_ssize_t d = f->depth;
            if (tb_enc_leaf(t, nib + d + 1, n - d - 1, t->value) < 0 || tb_ref(t, t->enc.p, t->enc.n, ref, &reflen) < 0) {
                rc = -1;
                goto done;
            }
            f = &t->stack[t->depth - 1];
            memcpy(f->ref[nib[d]], ref, reflen);
            f->reflen[nib[d]] = reflen;
        }
    } else {
        if (tb_enc_leaf(t, nib, n, t->value) < 0) { rc = -1; goto done; }
        *root_done = 1;
    }
    if (shared_after >= 0 || !*root_done) rc = tb_close(t, nib, shared_after, root_done);
done:
    if (nib != small) PyMem_Free(nib);
    return rc;
}

static PyObject *tb_take_out(TrieBuilderObject *t) {
    PyObject *out = t->out;
    t->out = NULL;
    return out;
}

static PyObject *TrieBuilder_feed(TrieBuilderObject *t, PyObject *pairs) {
    if (t->finished) { PyErr_SetString(PyExc_RuntimeError, "TrieBuilder already finished"); return NULL; }
    PyObject *seq = PySequence_Fast(pairs, "feed() takes a sequence of (key, value) pairs");
    if (seq == NULL) return NULL;
    t->out = PyList_New(0);
    if (t->out == NULL) { Py_DECREF(seq); return NULL; }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = items[i], *key, *value;
        if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2) {
            key = PyTuple_GET_ITEM(pair, 0);
            value = PyTuple_GET_ITEM(pair, 1);
        } else if (PyList_Check(pair) && PyList_GET_SIZE(pair) == 2) {
            key = PyList_GET_ITEM(pair, 0);
            value = PyList_GET_ITEM(pair, 1);
        } else {
            PyErr_SetString(PyExc_TypeError, "items must be (key, value) pairs");
            goto fail;
        }
        if (!PyBytes_Check(key) || !PyBytes_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "keys and values must be bytes");
            goto fail;
        }
        if (!t->started) {
            if (PyBytes_GET_SIZE(value) == 0) { value_error_hex("empty value for key %U", key, NULL); goto fail; }
            t->started = 1;
            t->shared_before = -1;
        } else {
            if (!bytes_less(t->key, key)) {
                value_error_hex("keys must be strictly ascending: key %U follows %U", key, t->key);
                goto fail;
            }
            if (PyBytes_GET_SIZE(value) == 0) { value_error_hex("empty value for key %U", key, NULL); goto fail; }
            Py_ssize_t shared_after = lcp_nibbles(t->key, key);
            int root_done = 0;
            if (tb_place(t, shared_after, &root_done) < 0) goto fail;
            t->shared_before = shared_after;
        }
        Py_INCREF(key);
        Py_XSETREF(t->key, key);
        Py_INCREF(value);
        Py_XSETREF(t->value, value);
    }
    Py_DECREF(seq);
    return tb_take_out(t);
fail:
    Py_DECREF(seq);
    Py_CLEAR(t->out);
    t->finished = 1; /* a failed builder cannot go on */
    return NULL;
}

static const uint8_t BLANK_ROOT[32] = {0x56, 0xe8, 0x1f, 0x17, 0x1b, 0xcc, 0x55, 0xa6, 0xff, 0x83, 0x45,
                                       0xe6, 0x92, 0xc0, 0xf8, 0x6e, 0x5b, 0x48, 0xe0, 0x1b, 0x99, 0x6c,
                                       0xad, 0xc0, 0x01, 0x62, 0x2f, 0xb5, 0xe3, 0x63, 0xb4, 0x21};

static PyObject *TrieBuilder_finish(TrieBuilderObject *t, PyObject *unused) {
    if (t->finished) { PyErr_SetString(PyExc_RuntimeError, "TrieBuilder already finished"); return NULL; }
    t->finished = 1;
    t->out = PyList_New(0);
    if (t->out == NULL) return NULL;
    uint8_t root[32];
    if (!t->started) {
        memcpy(root, BLANK_ROOT, 32);
    } else {
        int root_done = 0;
        if (tb_place(t, -1, &root_done) < 0) { Py_CLEAR(t->out); return NULL; }
        int emit = t->emit;
        t->emit = 1; /* the root is always emitted, even when small (as build_from_sorted) */
        if (!emit) {
            keccak256(t->enc.p, (size_t)t->enc.n, root);
        } else if (tb_hash_emit(t, t->enc.p, t->enc.n, root) < 0) {
            Py_CLEAR(t->out);
            return NULL;
        }
        t->emit = emit;
    }
    PyObject *out = tb_take_out(t);
    PyObject *res = Py_BuildValue("(y#N)", (const char *)root, (Py_ssize_t)32, out);
    return res;
}

static int TrieBuilder_init(TrieBuilderObject *t, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"emit", NULL};
    int emit = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p:TrieBuilder", kwlist, &emit)) return -1;
    t->emit = emit;
    return 0;
}

static void TrieBuilder_dealloc(TrieBuilderObject *t) {
    for (Py_ssize_t i = 0; i < t->depth; i++) Py_XDECREF(t->stack[i].value);
    PyMem_Free(t->stack);
    PyMem_Free(t->enc.p);
    PyMem_Free(t->tmp.p);
    Py_XDECREF(t->key);
    Py_XDECREF(t->value);
    Py_XDECREF(t->out);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyMethodDef TrieBuilder_methods[] = {
    {"feed", (PyCFunction)TrieBuilder_feed, METH_O,
     "feed(pairs) -> [(hash, rlp), ...]: add (key, value) pairs, keys strictly ascending, values non-empty"},
    {"finish", (PyCFunction)TrieBuilder_finish, METH_NOARGS,
     "finish() -> (root_hash, [(hash, rlp), ...]): the remaining nodes, the root last"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TrieBuilderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pycita._native.TrieBuilder",
    .tp_basicsize = sizeof(TrieBuilderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Streaming Merkle Patricia trie builder over ascending keys (see pycita.trie.build_from_sorted).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)TrieBuilder_init,
    .tp_dealloc = (destructor)TrieBuilder_dealloc,
    .tp_methods = TrieBuilder_methods,
};

/* ------------------------------------------------------------------ TrieWalker */

enum { N_LEAF = 1, N_EXT = 2, N_BRANCH = 3 };

typedef struct {
    PyObject *raw;          /* the node's RLP (owned) */
    int kind;
    int next;               /* branch: -1 before its value, then the next child index; ext: 0/1 */
    Py_ssize_t plen;        /* path length before this node's own nibbles */
    Py_ssize_t off[17], len[17]; /* branch: children + value items; leaf/ext: [0] path payload, [1] value/child */
} WFrame;

typedef struct {
    PyObject_HEAD
    PyObject *get, *prefix;
    WFrame *stack;
    Py_ssize_t depth, cap;
    uint8_t *path;
    Py_ssize_t path_cap;
    int started, done;
    uint8_t root[32];
} TrieWalkerObject;

/* Locate the RLP item at pos within [pos, limit): payload start, end, is_list; -1 when it does not fit. */
static int w_item(const uint8_t *d, Py_ssize_t pos, Py_ssize_t limit, Py_ssize_t *start, Py_ssize_t *end,
                  int *is_list) {
    if (pos >= limit) return -1;
    uint8_t b = d[pos];
    Py_ssize_t n;
    if (b < 0x80) { *start = pos; *end = pos + 1; *is_list = 0; return 0; }
    if (b < 0xB8 || (b >= 0xC0 && b < 0xF8)) {
        *is_list = b >= 0xC0;
        *start = pos + 1;
        n = b - (*is_list ? 0xC0 : 0x80);
    } else {
        *is_list = b >= 0xF8;
        int size_len = b - (*is_list ? 0xF7 : 0xB7);
        *start = pos + 1 + size_len;
        if (*start > limit || size_len > 7) return -1;
        uint64_t v = 0;
        for (int i = 0; i < size_len; i++) v = (v << 8) | d[pos + 1 + i];
        if (v > (uint64_t)limit) return -1;
        n = (Py_ssize_t)v;
    }
    *end = *start + n;
    return *end > limit ? -1 : 0;
}

static int w_bad(PyObject *raw, const char *reason) {
    PyObject *h = PyObject_CallMethod(raw, "hex", NULL);
    if (h != NULL) PyErr_Format(PyExc_ValueError, "trie node %U: %s", h, reason);
    Py_XDECREF(h);
    return -1;
}

/* A child reference at [s, e) (item payload start/end) of raw: validated like trie._child. */
static int w_child_ok(const uint8_t *d, Py_ssize_t pos, Py_ssize_t end, int is_list) {
    Py_ssize_t n = end - pos;
    if (is_list) return n < 32;
    return (n == 1 && d[pos] == 0x80) || n == 33;
}

static int w_decode(WFrame *f, PyObject *raw) {
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(raw);
    Py_ssize_t len = PyBytes_GET_SIZE(raw), s, e, a0, a1, b0, b1;
    int il, al, bl;
    if (w_item(d, 0, len, &s, &e, &il) < 0) return w_bad(raw, "truncated");
    if (!il || e != len) return w_bad(raw, "not a single RLP list");
    if (w_item(d, s, e, &a0, &a1, &al) < 0) return w_bad(raw, "truncated");
    if (a1 >= e) return w_bad(raw, "not a leaf, extension or branch");
    if (w_item(d, a1, e, &b0, &b1, &bl) < 0) return w_bad(raw, "truncated");
    f->raw = raw;
    if (b1 == e) {
        if (al || a1 == a0) return w_bad(raw, "leaf or extension path is not a hex-prefix string");
        int flag = d[a0] >> 4;
        if (flag > 3) return w_bad(raw, "bad hex-prefix flag");
        f->off[0] = a0;
        f->len[0] = a1 - a0;
        if (flag >= 2) {
            if (bl) return w_bad(raw, "leaf value is a list");
            f->kind = N_LEAF;
            f->off[1] = b0;
            f->len[1] = b1 - b0;
        } else {
            if (!w_child_ok(d, a1, b1, bl)) return w_bad(raw, "child reference is neither empty, a hash nor an embedded node");
            f->kind = N_EXT;
            f->off[1] = a1;
            f->len[1] = b1 - a1;
        }
        return 0;
    }
    f->kind = N_BRANCH;
    Py_ssize_t pos = s;
    for (int i = 0; i < 16; i++) {
        Py_ssize_t c0, c1;
        int cl;
        if (w_item(d, pos, e, &c0, &c1, &cl) < 0) return w_bad(raw, "truncated");
        if (!w_child_ok(d, pos, c1, cl)) return w_bad(raw, "child reference is neither empty, a hash nor an embedded node");
        f->off[i] = pos;
        f->len[i] = c1 - pos;
        pos = c1;
    }
    Py_ssize_t v0, v1;
    int vl;
    if (w_item(d, pos, e, &v0, &v1, &vl) < 0) return w_bad(raw, "truncated");
    if (vl || v1 != e) return w_bad(raw, "not a leaf, extension or branch");
    f->off[16] = v0;
    f->len[16] = v1 - v0;
    return 0;
}

static int w_path_reserve(TrieWalkerObject *w, Py_ssize_t n) {
    if (n <= w->path_cap) return 0;
    Py_ssize_t cap = w->path_cap ? w->path_cap : 128;
    while (cap < n) cap *= 2;
    uint8_t *p = PyMem_Realloc(w->path, (size_t)cap);
    if (p == NULL) { PyErr_NoMemory(); return -1; }
    w->path = p;
    w->path_cap = cap;
    return 0;
}

/* Push the node a reference piece points to (ref[0:n]); an empty reference pushes nothing. */
static int w_push_ref(TrieWalkerObject *w, const uint8_t *ref, Py_ssize_t n, Py_ssize_t plen) {
    PyObject *raw;
    if (n == 1 && ref[0] == 0x80) return 0;
    if (n == 33) {
        PyObject *key = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(w->prefix) + 32);
        if (key == NULL) return -1;
        memcpy(PyBytes_AS_STRING(key), PyBytes_AS_STRING(w->prefix), (size_t)PyBytes_GET_SIZE(w->prefix));
        memcpy(PyBytes_AS_STRING(key) + PyBytes_GET_SIZE(w->prefix), ref + 1, 32);
        raw = PyObject_CallOneArg(w->get, key);
        Py_DECREF(key);
        if (raw == NULL) return -1;
        if (raw == Py_None) {
            Py_DECREF(raw);
            PyObject *h = PyBytes_FromStringAndSize((const char *)ref + 1, 32);
            if (h != NULL) PyErr_SetObject(PyExc_KeyError, h);
            Py_XDECREF(h);
            return -1;
        }
        if (!PyBytes_Check(raw)) {
            Py_DECREF(raw);
            PyErr_SetString(PyExc_TypeError, "get() must return bytes or None");
            return -1;
        }
    } else {
        raw = PyBytes_FromStringAndSize((const char *)ref, n);
        if (raw == NULL) return -1;
    }
    if (w->depth == w->cap) {
        Py_ssize_t cap = w->cap ? w->cap * 2 : 16;
        WFrame *s = PyMem_Realloc(w->stack, sizeof(WFrame) * (size_t)cap);
        if (s == NULL) { Py_DECREF(raw); PyErr_NoMemory(); return -1; }
        w->stack = s;
        w->cap = cap;
    }
    WFrame *f = &w->stack[w->depth];
    f->plen = plen;
    f->next = -1;
    if (w_decode(f, raw) < 0) { Py_DECREF(raw); return -1; }
    w->depth++;
    return 0;
}

/* Appends the hex-prefix path nibbles of frame f (its [0] item) at path[plen:]; returns the new length. */
static Py_ssize_t w_append_hp(TrieWalkerObject *w, WFrame *f) {
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(f->raw) + f->off[0];
    Py_ssize_t hl = f->len[0];
    int odd = (d[0] >> 4) & 1;
    Py_ssize_t n = f->plen + (hl - 1) * 2 + odd;
    if (w_path_reserve(w, n + 1) < 0) return -1;
    Py_ssize_t p = f->plen;
    if (odd) w->path[p++] = d[0] & 15;
    for (Py_ssize_t i = 1; i < hl; i++) { w->path[p++] = d[i] >> 4; w->path[p++] = d[i] & 15; }
    return n;
}

static PyObject *w_key(TrieWalkerObject *w, Py_ssize_t n) {
    if (n & 1) { PyErr_SetString(PyExc_ValueError, "trie key of an odd number of nibbles"); return NULL; }
    PyObject *k = PyBytes_FromStringAndSize(NULL, n / 2);
    if (k == NULL) return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(k);
    for (Py_ssize_t i = 0; i < n / 2; i++) o[i] = (uint8_t)((w->path[2 * i] << 4) | w->path[2 * i + 1]);
    return k;
}

static void w_pop(TrieWalkerObject *w) {
    w->depth--;
    Py_CLEAR(w->stack[w->depth].raw);
}

static int w_emit(PyObject *out, PyObject *key, PyObject *raw, Py_ssize_t off, Py_ssize_t len) {
    if (key == NULL) return -1;
    PyObject *value = PyBytes_FromStringAndSize(PyBytes_AS_STRING(raw) + off, len);
    PyObject *pair = value ? PyTuple_Pack(2, key, value) : NULL;
    Py_DECREF(key);
    Py_XDECREF(value);
    if (pair == NULL) return -1;
    int rc = PyList_Append(out, pair);
    Py_DECREF(pair);
    return rc;
}

static PyObject *TrieWalker_next_batch(TrieWalkerObject *w, PyObject *arg) {
    Py_ssize_t want = PyLong_AsSsize_t(arg);
    if (want == -1 && PyErr_Occurred()) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    if (w->done) return out;
    if (!w->started) {
        w->started = 1;
        uint8_t ref[33];
        ref[0] = 0xA0;
        memcpy(ref + 1, w->root, 32);
        if (memcmp(w->root, BLANK_ROOT, 32) != 0 && w_push_ref(w, ref, 33, 0) < 0) goto fail;
    }
    while (w->depth > 0 && PyList_GET_SIZE(out) < want) {
        WFrame *f = &w->stack[w->depth - 1];
        const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(f->raw);
        if (f->kind == N_LEAF) {
            Py_ssize_t n = w_append_hp(w, f);
            if (n < 0) goto fail;
            if (w_emit(out, w_key(w, n), f->raw, f->off[1], f->len[1]) < 0) goto fail;
            w_pop(w);
        } else if (f->kind == N_EXT) {
            if (f->next >= 0) { w_pop(w); continue; }
            f->next = 0;
            Py_ssize_t n = w_append_hp(w, f);
            if (n < 0) goto fail;
            if (w_push_ref(w, d + f->off[1], f->len[1], n) < 0) goto fail;
        } else {
            if (f->next < 0) {
                f->next = 0;
                if (f->len[16] > 0) {
                    if (w_path_reserve(w, f->plen + 1) < 0) goto fail;
                    if (w_emit(out, w_key(w, f->plen), f->raw, f->off[16], f->len[16]) < 0) goto fail;
                }
                continue;
            }
            while (f->next < 16 && f->len[f->next] == 1 && d[f->off[f->next]] == 0x80) f->next++;
            if (f->next >= 16) { w_pop(w); continue; }
            int c = f->next++;
            if (w_path_reserve(w, f->plen + 2) < 0) goto fail;
            w->path[f->plen] = (uint8_t)c;
            if (w_push_ref(w, d + f->off[c], f->len[c], f->plen + 1) < 0) goto fail;
        }
    }
    if (w->depth == 0) w->done = 1;
    return out;
fail:
    Py_DECREF(out);
    w->done = 1;
    while (w->depth > 0) w_pop(w);
    return NULL;
}

static int TrieWalker_init(TrieWalkerObject *w, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"get", "root_hash", "prefix", NULL};
    PyObject *get;
    Py_buffer root;
    PyObject *prefix = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oy*|S:TrieWalker", kwlist, &get, &root, &prefix)) return -1;
    if (root.len != 32) {
        PyBuffer_Release(&root);
        PyErr_SetString(PyExc_ValueError, "root hash must be 32 bytes");
        return -1;
    }
    memcpy(w->root, root.buf, 32);
    PyBuffer_Release(&root);
    if (!PyCallable_Check(get)) { PyErr_SetString(PyExc_TypeError, "get must be callable"); return -1; }
    Py_INCREF(get);
    Py_XSETREF(w->get, get);
    if (prefix == NULL) {
        prefix = PyBytes_FromStringAndSize(NULL, 0);
        if (prefix == NULL) return -1;
    } else {
        Py_INCREF(prefix);
    }
    Py_XSETREF(w->prefix, prefix);
    return 0;
}

static void TrieWalker_dealloc(TrieWalkerObject *w) {
    while (w->depth > 0) w_pop(w);
    PyMem_Free(w->stack);
    PyMem_Free(w->path);
    Py_XDECREF(w->get);
    Py_XDECREF(w->prefix);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyMethodDef TrieWalker_methods[] = {
    {"next_batch", (PyCFunction)TrieWalker_next_batch, METH_O,
     "next_batch(n) -> up to n (key, value) pairs in ascending key order; [] at the end. Raises KeyError(hash) "
     "for a missing node, ValueError for a malformed one."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TrieWalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pycita._native.TrieWalker",
    .tp_basicsize = sizeof(TrieWalkerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "In-order walk of a trie's leaves (see pycita.trie.Trie.items).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)TrieWalker_init,
    .tp_dealloc = (destructor)TrieWalker_dealloc,
    .tp_methods = TrieWalker_methods,
};

/* ------------------------------------------------------------------ fat accounts */

/* A canonical RLP integer (empty, or no leading zero byte) of at most 8 bytes -> *out; 0 on success. */
static int small_uint(PyObject *raw, uint64_t *out) {
    if (!PyBytes_CheckExact(raw)) return -1;
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(raw);
    if (n > 8 || (n > 0 && p[0] == 0)) return -1;
    uint64_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++) v = (v << 8) | p[i];
    *out = v;
    return 0;
}

/* A canonical RLP integer of any size as a Python int, or NULL (no exception) when not canonical. */
static PyObject *canonical_int(PyObject *raw) {
    if (!PyBytes_CheckExact(raw)) return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(raw);
    if (n > 0 && p[0] == 0) return NULL;
    if (n <= 8) {
        uint64_t v = 0;
        for (Py_ssize_t i = 0; i < n; i++) v = (v << 8) | p[i];
        return PyLong_FromUnsignedLongLong(v);
    }
    return PyObject_CallMethod((PyObject *)&PyLong_Type, "from_bytes", "Os", raw, "big");
}

/* Blob state/data of a fat RLP: the state (0, 1, 2) when they agree (see state_format._blob), else -1. */
static int blob_state(PyObject *state_raw, PyObject *data) {
    uint64_t st;
    if (small_uint(state_raw, &st) < 0 || !PyBytes_CheckExact(data)) return -1;
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    if (st == 0) return n == 0 ? 0 : -1;
    if (st == 1) return n > 0 ? 1 : -1;
    if (st == 2) return n == 32 ? 2 : -1;
    return -1;
}

/* One decoded fat RLP -> (address, nonce, balance, code_state, code, abi_state, abi, storage) or NULL
 * without an exception when it is not the plain valid shape (the caller's Python decoder then decides);
 * NULL with an exception only for a memory error. */
static PyObject *parse_one_fat(PyObject *item) {
    if (!PyList_CheckExact(item) || PyList_GET_SIZE(item) != 2) return NULL;
    PyObject *address = PyList_GET_ITEM(item, 0), *body = PyList_GET_ITEM(item, 1);
    if (!PyBytes_CheckExact(address) || PyBytes_GET_SIZE(address) != 20) return NULL;
    if (!PyList_CheckExact(body) || PyList_GET_SIZE(body) != 7) return NULL;
    PyObject *code = PyList_GET_ITEM(body, 3), *abi = PyList_GET_ITEM(body, 5), *pairs = PyList_GET_ITEM(body, 6);
    int cs = blob_state(PyList_GET_ITEM(body, 2), code), as = blob_state(PyList_GET_ITEM(body, 4), abi);
    if (cs < 0 || as < 0 || !PyList_CheckExact(pairs)) return NULL;
    Py_ssize_t count = PyList_GET_SIZE(pairs);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *p = PyList_GET_ITEM(pairs, i);
        if (!PyList_CheckExact(p) || PyList_GET_SIZE(p) != 2 || !PyBytes_CheckExact(PyList_GET_ITEM(p, 0)) ||
            !PyBytes_CheckExact(PyList_GET_ITEM(p, 1)) || PyBytes_GET_SIZE(PyList_GET_ITEM(p, 1)) == 0)
            return NULL;
    }
    PyObject *nonce = canonical_int(PyList_GET_ITEM(body, 0));
    if (nonce == NULL) return NULL;
    PyObject *balance = canonical_int(PyList_GET_ITEM(body, 1));
    if (balance == NULL) { Py_DECREF(nonce); return NULL; }
    PyObject *storage = PyTuple_New(count);
    if (storage == NULL) { Py_DECREF(nonce); Py_DECREF(balance); return NULL; }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *p = PyList_GET_ITEM(pairs, i);
        PyObject *t = PyTuple_Pack(2, PyList_GET_ITEM(p, 0), PyList_GET_ITEM(p, 1));
        if (t == NULL) { Py_DECREF(nonce); Py_DECREF(balance); Py_DECREF(storage); return NULL; }
        PyTuple_SET_ITEM(storage, i, t);
    }
    return Py_BuildValue("(ONNiOiON)", address, nonce, balance, cs, code, as, abi, storage);
}

static PyObject *py_parse_fat(PyObject *self, PyObject *items) {
    if (!PyList_Check(items)) { PyErr_SetString(PyExc_TypeError, "parse_fat() takes a list"); return NULL; }
    Py_ssize_t n = PyList_GET_SIZE(items), i;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (i = 0; i < n; i++) {
        PyObject *t = parse_one_fat(PyList_GET_ITEM(items, i));
        if (t == NULL) {
            if (PyErr_Occurred()) { Py_DECREF(out); return NULL; }
            break;
        }
        int rc = PyList_Append(out, t);
        Py_DECREF(t);
        if (rc < 0) { Py_DECREF(out); return NULL; }
    }
    return Py_BuildValue("(Nn)", out, i < n ? i : (Py_ssize_t)-1);
}

/* An account RLP in its canonical short form -> (nonce, balance, storage_root, code_hash, abi_hash), or None
 * for any other shape (as state._fast_account; the caller's decoder then decides). */
static PyObject *py_decode_account(PyObject *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) { PyErr_SetString(PyExc_TypeError, "decode_account() takes bytes"); return NULL; }
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(arg);
    Py_ssize_t end = PyBytes_GET_SIZE(arg), p, n;
    if (end == 0) Py_RETURN_NONE;
    if (d[0] >= 0xC0 && d[0] < 0xF8) { p = 1; n = d[0] - 0xC0; }
    else if (d[0] == 0xF8 && end > 1 && d[1] >= 56) { p = 2; n = d[1]; }
    else Py_RETURN_NONE;
    if (p + n != end) Py_RETURN_NONE;
    Py_ssize_t off[5], len[5];
    for (int i = 0; i < 5; i++) {
        if (p >= end) Py_RETURN_NONE;
        uint8_t b = d[p];
        if (b < 0x80) { off[i] = p; len[i] = 1; p += 1; }
        else if (b < 0xB8) {
            n = b - 0x80;
            if (p + 1 + n > end || (n == 1 && d[p + 1] < 0x80)) Py_RETURN_NONE;
            off[i] = p + 1; len[i] = n; p += 1 + n;
        } else Py_RETURN_NONE;
    }
    if (p != end) Py_RETURN_NONE;
    PyObject *ints[2];
    for (int i = 0; i < 2; i++) {
        if (len[i] <= 8) {
            unsigned long long v = 0;
            for (Py_ssize_t k = 0; k < len[i]; k++) v = (v << 8) | d[off[i] + k];
            ints[i] = PyLong_FromUnsignedLongLong(v);
        } else {
            PyObject *raw = PyBytes_FromStringAndSize((const char *)d + off[i], len[i]);
            ints[i] = raw ? PyObject_CallMethod((PyObject *)&PyLong_Type, "from_bytes", "Os", raw, "big") : NULL;
            Py_XDECREF(raw);
        }
        if (ints[i] == NULL) { if (i) Py_DECREF(ints[0]); return NULL; }
    }
    return Py_BuildValue("(NNy#y#y#)", ints[0], ints[1], (const char *)d + off[2], len[2], (const char *)d + off[3],
                         len[3], (const char *)d + off[4], len[4]);
}

/* RLP of an account [nonce, balance, storage_root, code_hash, abi_hash] (state_format.account_rlp). */
static PyObject *py_account_rlp(PyObject *self, PyObject *args) {
    PyObject *nonce, *balance;
    Py_buffer h[3];
    if (!PyArg_ParseTuple(args, "O!O!y*y*y*:account_rlp", &PyLong_Type, &nonce, &PyLong_Type, &balance, &h[0],
                          &h[1], &h[2]))
        return NULL;
    PyObject *res = NULL;
    Buf b = {0};
    PyObject *ints[2] = {nonce, balance};
    for (int i = 0; i < 2; i++) {
        unsigned long long v = PyLong_AsUnsignedLongLong(ints[i]);
        if (!(v == (unsigned long long)-1 && PyErr_Occurred())) {
            uint8_t be[8];
            int nb = 0;
            for (unsigned long long x = v; x; x >>= 8) nb++;
            for (int k = 0; k < nb; k++) be[k] = (uint8_t)(v >> (8 * (nb - 1 - k)));
            if (buf_put_str(&b, be, nb) < 0) goto done;
            continue;
        }
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) goto done;
        PyErr_Clear();  /* negative, or wider than 64 bits */
        PyObject *bits = PyObject_CallMethod(ints[i], "bit_length", NULL);
        Py_ssize_t nbits = bits ? PyLong_AsSsize_t(bits) : -1;
        Py_XDECREF(bits);
        if (nbits < 0) goto done;
        PyObject *raw = PyObject_CallMethod(ints[i], "to_bytes", "ns", (nbits + 7) / 8, "big");
        if (raw == NULL) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "RLP integers are non-negative");
            }
            goto done;
        }
        int rc = buf_put_str(&b, (const uint8_t *)PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw));
        Py_DECREF(raw);
        if (rc < 0) goto done;
    }
    for (int i = 0; i < 3; i++)
        if (buf_put_str(&b, (const uint8_t *)h[i].buf, h[i].len) < 0) goto done;
    if (buf_wrap_list(&b, 0) < 0) goto done;
    res = PyBytes_FromStringAndSize((const char *)b.p, b.n);
done:
    for (int i = 0; i < 3; i++) PyBuffer_Release(&h[i]);
    PyMem_Free(b.p);
    return res;
}

/* ------------------------------------------------------------------ plain accounts of an export */

static const uint8_t EMPTY_KECCAK[32] = {0xc5, 0xd2, 0x46, 0x01, 0x86, 0xf7, 0x23, 0x3c, 0x92, 0x7e, 0x7d,
                                         0xb2, 0xdc, 0xc7, 0x03, 0xc0, 0xe5, 0x00, 0xb6, 0x53, 0xca, 0x82,
                                         0x27, 0x3b, 0x7b, 0xfa, 0xd8, 0x04, 0x5d, 0x85, 0xa4, 0x70};

/* The RLP item of a canonical integer at d[p:end] (one byte 1..0x7f, or a string of 1..32 bytes without a
 * leading zero, at least 0x80 when one byte; 0x80 for zero): its length, or -1. */
static Py_ssize_t plain_int_item(const uint8_t *d, Py_ssize_t p, Py_ssize_t end) {
    if (p >= end) return -1;
    uint8_t b = d[p];
    if (b == 0x00) return -1;
    if (b < 0x80) return 1;
    Py_ssize_t n = b - 0x80;
    if (n > 32 || p + 1 + n > end) return -1;
    if (n >= 1 && d[p + 1] == 0) return -1;
    if (n == 1 && d[p + 1] < 0x80) return -1;
    return 1 + n;
}

/* The fat RLP of pairs[i] = (address, account RLP) when the account is plain and canonical (a 20-byte
 * address; [nonce, balance, BLANK_ROOT, EMPTY_KECCAK, EMPTY_KECCAK] in the canonical long-list form), else
 * NULL without an exception; NULL with an exception only for a memory error. */
static PyObject *plain_fat_of(PyObject *address, PyObject *raw) {
    if (!PyBytes_CheckExact(address) || PyBytes_GET_SIZE(address) != 20 || !PyBytes_CheckExact(raw)) return NULL;
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(raw);
    Py_ssize_t end = PyBytes_GET_SIZE(raw);
    if (end < 2 || d[0] != 0xF8 || d[1] < 56 || 2 + (Py_ssize_t)d[1] != end) return NULL;
    Py_ssize_t p = 2;
    Py_ssize_t nl = plain_int_item(d, p, end);
    if (nl < 0) return NULL;
    Py_ssize_t bl = plain_int_item(d, p + nl, end);
    if (bl < 0) return NULL;
    Py_ssize_t h = p + nl + bl;
    if (h + 99 != end) return NULL;
    const uint8_t *hashes[3] = {BLANK_ROOT, EMPTY_KECCAK, EMPTY_KECCAK};
    for (int i = 0; i < 3; i++) {
        if (d[h + 33 * i] != 0xA0 || memcmp(d + h + 33 * i + 1, hashes[i], 32) != 0) return NULL;
    }
    /* [address, [nonce, balance, 0, b"", 0, b"", []]]: body payload <= 66 + 5 + 1 = 72 bytes */
    uint8_t out[2 + 21 + 2 + 72];
    Py_ssize_t body = nl + bl + 5;
    Py_ssize_t k = 0, bh = body < 56 ? 1 : 2, total = 21 + bh + body;
    if (total < 56) out[k++] = (uint8_t)(0xC0 + total);
    else { out[k++] = 0xF8; out[k++] = (uint8_t)total; }
    out[k++] = 0x94;
    memcpy(out + k, PyBytes_AS_STRING(address), 20);
    k += 20;
    if (body < 56) out[k++] = (uint8_t)(0xC0 + body);
    else { out[k++] = 0xF8; out[k++] = (uint8_t)body; }
    memcpy(out + k, d + p, (size_t)(nl + bl));
    k += nl + bl;
    memcpy(out + k, "\x80\x80\x80\x80\xC0", 5);
    k += 5;
    return PyBytes_FromStringAndSize((const char *)out, k);
}

static PyObject *py_plain_fats(PyObject *self, PyObject *args) {
    PyObject *pairs, *prev;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!nO:plain_fats", &PyList_Type, &pairs, &start, &prev)) return NULL;
    if (prev != Py_None && !PyBytes_Check(prev)) {
        PyErr_SetString(PyExc_TypeError, "plain_fats() prev must be bytes or None");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(pairs), i;
    if (start < 0) start = 0;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    PyObject *last = prev;
    for (i = start; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) break;
        PyObject *address = PyTuple_GET_ITEM(pair, 0);
        if (!PyBytes_CheckExact(address)) break;
        if (last != Py_None) {
            Py_ssize_t la = PyBytes_GET_SIZE(last), lb = PyBytes_GET_SIZE(address);
            int c = memcmp(PyBytes_AS_STRING(address), PyBytes_AS_STRING(last), (size_t)(la < lb ? la : lb));
            if (c < 0 || (c == 0 && lb <= la)) break;
        }
        PyObject *fat = plain_fat_of(address, PyTuple_GET_ITEM(pair, 1));
        if (fat == NULL) {
            if (PyErr_Occurred()) { Py_DECREF(out); return NULL; }
            break;
        }
        int rc = PyList_Append(out, fat);
        Py_DECREF(fat);
        if (rc < 0) { Py_DECREF(out); return NULL; }
        last = address;
    }
    return Py_BuildValue("(Nn)", out, i);
}

/* ------------------------------------------------------------------ RLP encoding */

static int rlp_encode_into(Buf *b, PyObject *obj, int depth) {
    if (PyBytes_Check(obj)) return buf_put_str(b, (const uint8_t *)PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
    if (PyLong_CheckExact(obj)) {  /* a non-negative integer below 2**64: big-endian, no leading zeros */
        unsigned long long v = PyLong_AsUnsignedLongLong(obj);
        if (v == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "rlp_encode() takes integers from 0 to 2**64 - 1");
            return -1;
        }
        uint8_t be[8];
        int nb = 0;
        for (unsigned long long x = v; x; x >>= 8) nb++;
        for (int k = 0; k < nb; k++) be[k] = (uint8_t)(v >> (8 * (nb - 1 - k)));
        return buf_put_str(b, be, nb);
    }
    if (!PyList_Check(obj) && !PyTuple_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "rlp_encode() takes bytes, small integers and lists/tuples of them");
        return -1;
    }
    if (depth > 64) { PyErr_SetString(PyExc_ValueError, "structure nested too deep"); return -1; }
    Py_ssize_t from = b->n, n = PySequence_Fast_GET_SIZE(obj);
    PyObject **items = PySequence_Fast_ITEMS(obj);
    for (Py_ssize_t i = 0; i < n; i++)
        if (rlp_encode_into(b, items[i], depth + 1) < 0) return -1;
    return buf_wrap_list(b, from);
}

static PyObject *py_rlp_encode(PyObject *self, PyObject *obj) {
    Buf b = {0};
    PyObject *res = NULL;
    if (rlp_encode_into(&b, obj, 0) == 0) res = PyBytes_FromStringAndSize((const char *)b.p, b.n);
    PyMem_Free(b.p);
    return res;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef native_methods[] = {
    {"keccak256", py_keccak256, METH_O, "keccak256(data) -> 32-byte Keccak-256 digest"},
    {"parse_fat", py_parse_fat, METH_O,
     "parse_fat(items) -> ([(address, nonce, balance, code_state, code, abi_state, abi, storage)...], bad): the "
     "plain valid fat accounts of a decoded state chunk, up to the first other one (bad = its index, or -1)"},
    {"decode_account", py_decode_account, METH_O,
     "decode_account(raw) -> (nonce, balance, storage_root, code_hash, abi_hash) for the canonical short form, "
     "else None"},
    {"account_rlp", py_account_rlp, METH_VARARGS,
     "account_rlp(nonce, balance, storage_root, code_hash, abi_hash) -> the account's RLP"},
    {"plain_fats", py_plain_fats, METH_VARARGS,
     "plain_fats(pairs, start, prev) -> (fats, stop): the fat RLPs of pairs[start:stop], the (address, account "
     "RLP) pairs from start that are plain (no code, ABI or storage), canonical and ascending after prev"},
    {"rlp_encode", py_rlp_encode, METH_O, "rlp_encode(obj) -> the RLP of nested lists/tuples of bytes"},
    {"rlp_decode", py_rlp_decode, METH_VARARGS,
     "rlp_decode(data, max_depth) -> bytes | list; ValueError for anything but one canonical RLP item"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "pycita._native", "Native hot loops of pycita's snapshot code.", -1, native_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&TrieBuilderType) < 0 || PyType_Ready(&TrieWalkerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL) return NULL;
    Py_INCREF(&TrieBuilderType);
    if (PyModule_AddObject(m, "TrieBuilder", (PyObject *)&TrieBuilderType) < 0) {
        Py_DECREF(&TrieBuilderType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&TrieWalkerType);
    if (PyModule_AddObject(m, "TrieWalker", (PyObject *)&TrieWalkerType) < 0) {
        Py_DECREF(&TrieWalkerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
