/* Byte-level BPE encoding of many documents at once, exactly as Hugging Face `tokenizers` encodes
 * with normalizer Replace(U+FDD0 -> ""), pre-tokenizer ByteLevel(add_prefix_space=False,
 * use_regex=True) and a BPE model without dropout (minigpt/data/tokenizer/fast_encode.py).
 *
 * Per document: drop U+FDD0; split into pre-tokens with GPT-2's pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * (scanned by hand from a per-code-point class table the caller builds); map each pre-token's bytes
 * to the 256 byte tokens; then repeatedly apply the adjacent merge of lowest rank, leftmost first on
 * ties, with a min-heap of (rank, position) whose stale entries are skipped when popped.
 * A document holding a code point whose class the caller marked unsafe is not encoded (count -1).
 * Documents run in parallel (OpenMP); each thread keeps an exact, fixed-size cache of short words.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { C_OTHER = 0, C_LETTER = 1, C_NUMBER = 2, C_SPACE = 3, C_UNSAFE = 4 };
#define N_CODEPOINTS 0x110000
#define EMPTY_KEY UINT64_MAX
#define CACHE_BITS 15
#define CACHE_KEY 40  /* words of at most this many bytes are cached */
#define CACHE_IDS 20  /* ... when they encode to at most this many tokens */

typedef struct { uint64_t key; uint32_t rank, new_id; } MergeSlot;
typedef struct { uint32_t id; int32_t prev, next, alive; } Sym;
typedef struct { uint64_t order; uint32_t new_id; } HeapItem; /* order = rank << 32 | pos */
typedef struct {
    uint64_t hash;
    uint8_t klen, nids;
    uint8_t key[CACHE_KEY];
    uint32_t ids[CACHE_IDS];
} CacheSlot;

typedef struct {
    uint8_t *text; int64_t text_cap;       /* a document without U+FDD0 */
    Sym *sym; HeapItem *heap; int64_t word_cap;
    CacheSlot *cache;
    int failed;                            /* an allocation failed */
} Thread;

typedef struct {
    uint8_t *cls;
    uint32_t byte_id[256];
    MergeSlot *merges; uint64_t mask;
    int n_threads;
    Thread *threads;
} Encoder;

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

static int merge_lookup(const Encoder *e, uint32_t a, uint32_t b, uint32_t *rank, uint32_t *new_id) {
    uint64_t key = ((uint64_t)a << 32) | b;
    uint64_t i = mix64(key) & e->mask;
    for (;;) {
        const MergeSlot *s = &e->merges[i];
        if (s->key == key) { *rank = s->rank; *new_id = s->new_id; return 1; }
        if (s->key == EMPTY_KEY) return 0;
        i = (i + 1) & e->mask;
    }
}

void mg_bpe_free(Encoder *e) {
    if (!e) return;
    if (e->threads)
        for (int t = 0; t < e->n_threads; t++) {
            free(e->threads[t].text); free(e->threads[t].sym); free(e->threads[t].heap); free(e->threads[t].cache);
        }
    free(e->threads); free(e->merges); free(e->cls); free(e);
}

/* classes: one byte per code point (C_*); byte_ids: the token of each byte value; merges: n rows of
 * (left id, right id, rank, new id), a later row for the same pair replacing an earlier one. */
Encoder *mg_bpe_new(const uint8_t *classes, const uint32_t *byte_ids, const uint32_t *merges, int64_t n_merges,
                    int n_threads) {
    Encoder *e = calloc(1, sizeof(Encoder));
    if (!e) return NULL;
    uint64_t size = 16;
    while (size < (uint64_t)n_merges * 2 + 16) size <<= 1;
    e->mask = size - 1;
    e->n_threads = n_threads < 1 ? 1 : n_threads;
    e->cls = malloc(N_CODEPOINTS);
    e->merges = malloc(size * sizeof(MergeSlot));
    e->threads = calloc((size_t)e->n_threads, sizeof(Thread));
    if (!e->cls || !e->merges || !e->threads) { mg_bpe_free(e); return NULL; }
    memcpy(e->cls, classes, N_CODEPOINTS);
    memcpy(e->byte_id, byte_ids, sizeof e->byte_id);
    for (uint64_t i = 0; i < size; i++) e->merges[i].key = EMPTY_KEY;
    for (int64_t m = 0; m < n_merges; m++) {
        const uint32_t *row = merges + 4 * m;
        uint64_t key = ((uint64_t)row[0] << 32) | row[1];
        uint64_t i = mix64(key) & e->mask;
        while (e->merges[i].key != EMPTY_KEY && e->merges[i].key != key) i = (i + 1) & e->mask;
        e->merges[i].key = key; e->merges[i].rank = row[2]; e->merges[i].new_id = row[3];
    }
    return e;
}

/* ---- pre-tokenization */

/* Decodes the code point at s[i] (valid UTF-8 from Python); *cls gets its class. Returns its length. */
static inline int next_char(const Encoder *e, const uint8_t *s, int64_t n, int64_t i, uint32_t *cp, int *cls) {
    uint8_t b = s[i];
    uint32_t c; int len;
    if (b < 0x80) { c = b; len = 1; }
    else if (b >= 0xC2 && b < 0xE0 && i + 1 < n) { c = ((uint32_t)(b & 0x1F) << 6) | (s[i + 1] & 0x3F); len = 2; }
    else if (b >= 0xE0 && b < 0xF0 && i + 2 < n) {
        c = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F); len = 3;
    } else if (b >= 0xF0 && b < 0xF5 && i + 3 < n) {
        c = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) | ((uint32_t)(s[i + 2] & 0x3F) << 6)
            | (s[i + 3] & 0x3F);
        len = 4;
    } else { *cp = 0xFFFFFFFF; *cls = C_UNSAFE; return 1; }
    *cp = c;
    *cls = c < N_CODEPOINTS ? e->cls[c] : C_UNSAFE;
    return len;
}

/* End of the run of characters of class `want` starting at i; -1 if an unsafe character is met. */
static int64_t run_end(const Encoder *e, const uint8_t *s, int64_t n, int64_t i, int want) {
    while (i < n) {
        uint32_t cp; int cls;
        int len = next_char(e, s, n, i, &cp, &cls);
        if (cls == C_UNSAFE) return -1;
        if (cls != want) break;
        i += len;
    }
    return i;
}

/* End of the pre-token starting at p (< n); -1 if it meets an unsafe character. */
static int64_t pretoken_end(const Encoder *e, const uint8_t *s, int64_t n, int64_t p) {
    uint32_t cp; int cls;
    int len = next_char(e, s, n, p, &cp, &cls);
    if (cls == C_UNSAFE) return -1;
    if (cp == '\'' && p + 1 < n) {  /* 's 't 'm 'd 're 've 'll, case-sensitive */
        uint8_t a = s[p + 1], b = p + 2 < n ? s[p + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return p + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return p + 3;
    }
    if (cp == ' ' && p + 1 < n) {  /* " ?X+" with X the class of the next character, unless it is a space */
        uint32_t cp2; int cls2;
        next_char(e, s, n, p + 1, &cp2, &cls2);
        if (cls2 == C_UNSAFE) return -1;
        if (cls2 != C_SPACE) return run_end(e, s, n, p + 1, cls2);
    }
    if (cls != C_SPACE) return run_end(e, s, n, p + len, cls);
    /* \s+(?!\S) | \s+ : a run of spaces, less its last character when a non-space follows the run */
    int64_t i = p + len, last = p;
    while (i < n) {
        uint32_t c2; int k2;
        int l2 = next_char(e, s, n, i, &c2, &k2);
        if (k2 == C_UNSAFE) return -1;
        if (k2 != C_SPACE) return last > p ? last : i;
        last = i;
        i += l2;
    }
    return n;
}

/* ---- BPE on one pre-token */

static int grow(Thread *t, int64_t m) {
    if (m <= t->word_cap) return 1;
    int64_t cap = m < 256 ? 256 : m * 2;
    Sym *sym = realloc(t->sym, (size_t)cap * sizeof(Sym));
    if (sym) t->sym = sym;
    HeapItem *heap = realloc(t->heap, (size_t)cap * 3 * sizeof(HeapItem));
    if (heap) t->heap = heap;
    if (!sym || !heap) return 0;
    t->word_cap = cap;
    return 1;
}

static inline void heap_push(HeapItem *h, int64_t *n, uint64_t order, uint32_t new_id) {
    int64_t i = (*n)++;
    while (i > 0) {
        int64_t parent = (i - 1) >> 1;
        if (h[parent].order <= order) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i].order = order; h[i].new_id = new_id;
}

static inline HeapItem heap_pop(HeapItem *h, int64_t *n) {
    HeapItem top = h[0], last = h[--(*n)];
    int64_t i = 0, m = *n;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && h[c + 1].order < h[c].order) c++;
        if (h[c].order >= last.order) break;
        h[i] = h[c];
        i = c;
    }
    if (m > 0) h[i] = last;
    return top;
}

static inline void push_pair(const Encoder *e, HeapItem *h, int64_t *nh, const Sym *sym, int32_t pos) {
    uint32_t rank, new_id;
    if (merge_lookup(e, sym[pos].id, sym[sym[pos].next].id, &rank, &new_id))
        heap_push(h, nh, ((uint64_t)rank << 32) | (uint32_t)pos, new_id);
}

/* Tokens of w[0..m) written to out; returns their count, or -1 when out of memory. */
static int64_t bpe_word(const Encoder *e, Thread *t, const uint8_t *w, int64_t m, uint32_t *out) {
    if (m == 1) { out[0] = e->byte_id[w[0]]; return 1; }
    if (!grow(t, m)) return -1;
    Sym *sym = t->sym;
    HeapItem *h = t->heap;
    int64_t nh = 0;
    for (int64_t i = 0; i < m; i++) {
        sym[i].id = e->byte_id[w[i]]; sym[i].prev = (int32_t)i - 1;
        sym[i].next = i + 1 < m ? (int32_t)i + 1 : -1; sym[i].alive = 1;
    }
    for (int64_t i = 0; i + 1 < m; i++) push_pair(e, h, &nh, sym, (int32_t)i);
    while (nh > 0) {
        HeapItem top = heap_pop(h, &nh);
        int32_t pos = (int32_t)(top.order & 0xFFFFFFFFu);
        if (!sym[pos].alive || sym[pos].next < 0) continue;
        int32_t right = sym[pos].next;
        uint32_t rank, new_id;  /* skip an entry whose pair has changed since it was pushed */
        if (!merge_lookup(e, sym[pos].id, sym[right].id, &rank, &new_id) || new_id != top.new_id) continue;
        sym[pos].id = new_id;
        sym[pos].next = sym[right].next;
        sym[right].alive = 0;
        if (sym[right].next >= 0) sym[sym[right].next].prev = pos;
        if (sym[pos].prev >= 0) push_pair(e, h, &nh, sym, sym[pos].prev);
        if (sym[pos].next >= 0) push_pair(e, h, &nh, sym, pos);
    }
    int64_t k = 0;
    for (int32_t i = 0; i >= 0; i = sym[i].next) out[k++] = sym[i].id;
    return k;
}

static inline uint64_t hash_bytes(const uint8_t *w, int64_t m) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)m;
    int64_t i = 0;
    for (; i + 8 <= m; i += 8) { uint64_t x; memcpy(&x, w + i, 8); h = mix64(h ^ x); }
    uint64_t x = 0;
    memcpy(&x, w + i, (size_t)(m - i));
    return mix64(h ^ x ^ 0xA5);
}

/* bpe_word through the thread's word cache (exact: the full key is compared). */
static int64_t encode_word(const Encoder *e, Thread *t, const uint8_t *w, int64_t m, uint32_t *out) {
    if (m == 1 || m > CACHE_KEY || !t->cache) return bpe_word(e, t, w, m, out);
    uint64_t hash = hash_bytes(w, m);
    CacheSlot *slot = &t->cache[hash & ((1u << CACHE_BITS) - 1)];
    if (slot->hash == hash && slot->klen == m && memcmp(slot->key, w, (size_t)m) == 0) {
        memcpy(out, slot->ids, slot->nids * sizeof(uint32_t));
        return slot->nids;
    }
    int64_t k = bpe_word(e, t, w, m, out);
    if (k > 0 && k <= CACHE_IDS) {
        slot->hash = hash; slot->klen = (uint8_t)m; slot->nids = (uint8_t)k;
        memcpy(slot->key, w, (size_t)m);
        memcpy(slot->ids, out, (size_t)k * sizeof(uint32_t));
    }
    return k;
}

/* ---- documents */

/* The document without U+FDD0 (EF B7 90): `s` itself when it holds none, else the thread's copy. */
static const uint8_t *strip_mark(Thread *t, const uint8_t *s, int64_t *n) {
    const uint8_t *hit = NULL;
    for (int64_t i = 0; i + 2 < *n; i++)
        if (s[i] == 0xEF && s[i + 1] == 0xB7 && s[i + 2] == 0x90) { hit = s + i; break; }
    if (!hit) return s;
    if (*n > t->text_cap) {
        uint8_t *buf = realloc(t->text, (size_t)*n);
        if (!buf) return NULL;
        t->text = buf; t->text_cap = *n;
    }
    int64_t k = 0;
    for (int64_t i = 0; i < *n; i++) {
        if (i + 2 < *n && s[i] == 0xEF && s[i + 1] == 0xB7 && s[i + 2] == 0x90) { i += 2; continue; }
        t->text[k++] = s[i];
    }
    *n = k;
    return t->text;
}

/* Tokens of one document into out (room for n ids); -1 unsafe, -2 out of memory. */
static int64_t encode_doc(const Encoder *e, Thread *t, const uint8_t *s, int64_t n, uint32_t *out) {
    s = strip_mark(t, s, &n);
    if (!s) return -2;
    int64_t k = 0;
    for (int64_t p = 0; p < n;) {
        int64_t end = pretoken_end(e, s, n, p);
        if (end < 0) return -1;
        int64_t got = encode_word(e, t, s + p, end - p, out + k);
        if (got < 0) return -2;
        k += got;
        p = end;
    }
    return k;
}

/* Encodes docs [offsets[i], offsets[i+1]) of text. out must hold (offsets[n]-offsets[0]) + n ids.
 * With eos_id >= 0 every document is preceded by it. On return out holds all ids back to back;
 * counts[i] = tokens of doc i (without the eos), or -1 for an unsafe doc (none written; its eos is).
 * Returns the number of ids in out, or -1 when out of memory. */
int64_t mg_bpe_encode(Encoder *e, const uint8_t *text, const int64_t *offsets, int64_t n_docs, int64_t eos_id,
                      uint32_t *out, int64_t *counts, int n_threads) {
    int nt = n_threads < 1 ? 1 : (n_threads > e->n_threads ? e->n_threads : n_threads);
    int64_t base = offsets[0], lead = eos_id >= 0 ? 1 : 0;
    int oom = 0;
    #pragma omp parallel num_threads(nt) reduction(|:oom)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        Thread *t = &e->threads[tid];
        if (!t->cache) t->cache = calloc((size_t)1 << CACHE_BITS, sizeof(CacheSlot));  /* uncached if NULL */
        #pragma omp for schedule(dynamic, 4)
        for (int64_t i = 0; i < n_docs; i++) {
            uint32_t *dst = out + (offsets[i] - base) + i;
            if (lead) dst[0] = (uint32_t)eos_id;
            int64_t k = encode_doc(e, t, text + offsets[i], offsets[i + 1] - offsets[i], dst + lead);
            if (k == -2) { oom = 1; k = -1; }
            counts[i] = k;
        }
    }
    if (oom) return -1;
    int64_t pos = 0;  /* each doc's ids move left (never right) to follow the previous doc */
    for (int64_t i = 0; i < n_docs; i++) {
        int64_t len = lead + (counts[i] > 0 ? counts[i] : 0);
        memmove(out + pos, out + (offsets[i] - base) + i, (size_t)len * sizeof(uint32_t));
        pos += len;
    }
    return pos;
}

/* Pre-token end offsets (bytes) of one text without U+FDD0; returns their count (at most cap are
 * written), or -1 if the text holds an unsafe character. */
int64_t mg_bpe_pretokenize(const Encoder *e, const uint8_t *s, int64_t n, int64_t *ends, int64_t cap) {
    int64_t k = 0;
    for (int64_t p = 0; p < n;) {
        int64_t end = pretoken_end(e, s, n, p);
        if (end < 0) return -1;
        if (k < cap) ends[k] = end;
        k++;
        p = end;
    }
    return k;
}
