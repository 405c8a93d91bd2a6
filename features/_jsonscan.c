/* One pass over a block of JSON lines: the values of a few JSON paths as the JSON text DuckDB's
 * json_extract writes for them (yyjson), for the lines whose raw text already *is* that text.
 *
 * features/vectorised.py's common-shape query used to start every line with
 * kairos_plain_line(raw) AND kairos_screened(raw), json_extract(raw, [paths]), json_keys(raw,
 * [objects]) and a duplicate-key check (~8 µs a line). This module does that part in C, without
 * the GIL, and hands back Arrow buffers. It decides for each line:
 *
 *   SKIPPED  (0)  kairos_plain_line(raw) AND kairos_screened(raw) is false: the common query
 *                 claims no such line, so it goes straight to the general one;
 *   SCANNED  (1)  the values of the paths are written out (absent: null);
 *   REFUSED  (2)  anything this scanner does not reproduce with certainty: the line takes the
 *                 unchanged SQL path (common query on the raw text, then the general one).
 *
 * A line is SCANNED only when its raw text is, byte for byte, what yyjson writes for it, so that
 * every value is a slice of the line: strict JSON with no whitespace outside strings, a root
 * object, strings without control characters (the plain test already excludes backslashes and
 * non-ASCII bytes), no duplicate key in any object, nesting under MAX_DEPTH, and numbers in the
 * forms yyjson writes back unchanged (see number()). Everything else is REFUSED.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem, newlocale, uselocale */
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SKIPPED 0
#define SCANNED 1
#define REFUSED 2

#define MAX_DEPTH 32
#define MAX_KEYS 64 /* keys of one object; more is refused (a quadratic duplicate check) */
#define MAX_NODES 128
#define MAX_PATHS 64

/* --- The paths, as a tree of object keys ----------------------------------------------------- */

typedef struct {
    const char *key; /* into the path's UTF-8 text */
    Py_ssize_t key_length;
    int parent;
    int target; /* index of the path that ends here, or -1 */
} Node;

typedef struct {
    Node nodes[MAX_NODES];
    int count;
} Tree;

static int child_of(const Tree *tree, int parent, const char *key, Py_ssize_t length) {
    for (int i = 1; i < tree->count; i++) {
        const Node *node = &tree->nodes[i];
        if (node->parent == parent && node->key_length == length &&
            memcmp(node->key, key, (size_t)length) == 0)
            return i;
    }
    return -1;
}

/* Paths of the form $.key.key... with keys of letters, digits and '_' (what VALUE_PATHS holds;
 * anything else raises, so a new kind of path cannot be misread silently). */
static int build_tree(Tree *tree, const char **texts, const Py_ssize_t *lengths, int count) {
    tree->count = 1;
    tree->nodes[0] = (Node){NULL, 0, -1, -1};
    for (int p = 0; p < count; p++) {
        const char *text = texts[p];
        Py_ssize_t length = lengths[p], i = 1;
        if (length < 1 || text[0] != '$') return -1;
        int node = 0;
        while (i < length) {
            if (text[i] != '.') return -1;
            Py_ssize_t start = ++i;
            while (i < length && (text[i] == '_' || (text[i] >= 'a' && text[i] <= 'z') ||
                                  (text[i] >= 'A' && text[i] <= 'Z') ||
                                  (text[i] >= '0' && text[i] <= '9')))
                i++;
            if (i == start) return -1;
            int next = child_of(tree, node, text + start, i - start);
            if (next < 0) {
                if (tree->count == MAX_NODES) return -1;
                next = tree->count++;
                tree->nodes[next] = (Node){text + start, i - start, node, -1};
            }
            node = next;
        }
        if (tree->nodes[node].target >= 0) return -1; /* the same path twice */
        tree->nodes[node].target = p;
    }
    return 0;
}

/* --- kairos_plain_line AND kairos_screened, exactly ----------------------------------------- */

/* RE2's \s: [\t\n\f\r ] */
static int re2_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r';
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* Does @ODD_NUMBER@ (\s*-?(?:(?i:nan|inf)|[0-9]{19}|[0-9]+(?:\.[0-9]+)?[eE][+-]?[0-9]{3}))
 * match at p? When `closing`, \s*[}\]] counts too (the pattern after ','). */
static int odd_number_at(const unsigned char *p, const unsigned char *end, int closing) {
    while (p < end && re2_space(*p)) p++;
    if (closing && p < end && (*p == '}' || *p == ']')) return 1;
    if (p < end && *p == '-') p++;
    if (end - p >= 3) {
        int a = lower(p[0]), b = lower(p[1]), c = lower(p[2]);
        if ((a == 'n' && b == 'a' && c == 'n') || (a == 'i' && b == 'n' && c == 'f')) return 1;
    }
    const unsigned char *digits = p;
    while (p < end && is_digit(*p)) p++;
    if (p - digits >= 19) return 1;
    if (p == digits) return 0;
    if (p < end && *p == '.' && p + 1 < end && is_digit(p[1])) {
        p++;
        while (p < end && is_digit(*p)) p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        const unsigned char *exponent = p;
        while (p < end && is_digit(*p) && p - exponent < 3) p++;
        return p - exponent == 3;
    }
    return 0;
}

/* kairos_plain_line(raw) AND kairos_screened(raw) (features/vectorised.py _MACROS_TEMPLATE),
 * byte by byte. Used for long lines only (the bracket count); the parser below checks the same
 * conditions for the others as it goes. */
static int plain_and_screened(const unsigned char *line, Py_ssize_t length) {
    const unsigned char *end = line + length;
    Py_ssize_t brackets = 0;
    for (const unsigned char *p = line; p < end; p++) {
        unsigned char c = *p;
        if (c == '\\' || c >= 0x80) return 0;
        if (c == '"' && p + 1 < end && p[1] == ' ') return 0;
        if (c == ' ' && p + 1 < end && p[1] == '"') return 0;
        if (c == '{' || c == '[') brackets++;
        if ((c == ':' || c == ',' || c == '[') && odd_number_at(p + 1, end, c == ',')) return 0;
    }
    /* strlen(raw) >= 2048 and 1000+ opening brackets: refused by kairos_screened */
    return !(length >= 2048 && brackets >= 1000);
}

/* --- The parser: strict, compact JSON that yyjson writes back unchanged ---------------------- */

typedef struct {
    const Tree *tree;
    const unsigned char *line, *end;
    int32_t *starts;  /* per path: the value's offset in the line, -1 when absent */
    int32_t *lengths; /* per path: its length */
    const char *const *needles;
    const Py_ssize_t *needle_lengths;
    Py_ssize_t needle_count;
    unsigned char *found; /* per needle: the line contains it */
    int skipped;          /* proof found that kairos_plain_line or kairos_screened is false */
} Scan;

/* Bytes inside a string that string() looks at; the others are skipped in a tight loop. */
static unsigned char in_string[256];

static void init_tables(void) {
    for (int c = 0; c < 0x20; c++) in_string[c] = 1;
    for (int c = 0x80; c < 0x100; c++) in_string[c] = 1;
    for (const char *b = "\"\\ :,["; *b; b++) in_string[(unsigned char)*b] = 1;
}

static const unsigned char *value(Scan *scan, const unsigned char *p, int node, int depth);

/* A string (p at its opening quote); the end of it, or NULL.
 *
 * Outside strings a parsed line has no whitespace, no backslash, no non-ASCII byte and only
 * numbers that number() accepts, so kairos_plain_line and kairos_screened can only fail inside
 * strings; this loop checks them there: a backslash or non-ASCII byte, a space just inside a
 * quote ('" ' or ' "'), or ':', ',' or '[' followed by what @ODD_NUMBER@ matches (the regex
 * runs over the raw line, so it reads on past the string's end). Each sets `skipped`.
 *
 * Without escapes, '"needle"' occurs in a valid line exactly where a string *is* the needle
 * (its first quote cannot close a string: a closing quote is followed by ':', ',', '}' or ']'),
 * so contains(raw, '"needle"') is decided here. */
static const unsigned char *string(Scan *scan, const unsigned char *p) {
    const unsigned char *content = p + 1, *end = scan->end;
    for (p = content; p < end; p++) {
        while (p < end && !in_string[*p]) p++;
        if (p == end) return NULL;
        unsigned char c = *p;
        if (c == '"') {
            Py_ssize_t length = p - content;
            for (Py_ssize_t k = 0; k < scan->needle_count; k++)
                if (scan->needle_lengths[k] == length + 2 &&
                    memcmp(scan->needles[k] + 1, content, (size_t)length) == 0 &&
                    scan->needles[k][0] == '"' && scan->needles[k][length + 1] == '"')
                    scan->found[k] = 1;
            return p + 1;
        }
        if (c == '\\' || c >= 0x80) {
            scan->skipped = 1;
            return NULL;
        }
        if (c < 0x20) return NULL; /* invalid JSON: the SQL path says so */
        if (c == ' ') {
            if (p == content || (p + 1 < end && p[1] == '"')) {
                scan->skipped = 1;
                return NULL;
            }
            continue;
        }
        if (odd_number_at(p + 1, end, c == ',')) { /* ':', ',' or '[' */
            scan->skipped = 1;
            return NULL;
        }
    }
    return NULL;
}

/* Is this digit string (the significant digits of a positive double x, n of them) the one
 * yyjson writes, i.e. the shortest that reads back as x and, of those, the nearest to x?
 * Up to 15 digits it always is: two decimals of 15 digits or fewer never read as the same
 * double (DBL_DIG), so no shorter one reads as x. For 16 and 17 the nearest n-digit decimal
 * (printf rounds correctly) must be this one, and the nearest (n-1)-digit one must not read
 * back as x; when x is not a power of two its rounding interval is symmetric, so no shorter
 * decimal reads as x either. At a power of two every shorter length is tried. */
static int shortest_digits(double x, const char *digits, int n) {
    char buffer[40];
    if (n <= 15) return 1;
    if (n > 17) return 0;
    snprintf(buffer, sizeof buffer, "%.*e", n - 1, x);
    /* buffer: d.ddd...e+XX */
    if (buffer[0] != digits[0] || memcmp(buffer + 2, digits + 1, (size_t)(n - 1)) != 0) return 0;
    int exponent;
    double mantissa = frexp(x, &exponent);
    int shortest_from = (mantissa == 0.5) ? 1 : n - 1;
    for (int k = shortest_from; k < n; k++) {
        snprintf(buffer, sizeof buffer, "%.*e", k - 1, x);
        if (strtod(buffer, NULL) == x) return 0;
    }
    return 1;
}

/* A number token, accepted only in the forms yyjson writes back byte for byte (measured against
 * DuckDB in tests/test_jsonscan.py):
 *   integers of at most 18 digits, not -0 (yyjson writes 0);
 *   decimals d.d with no exponent, at most 15 integer digits (below 1e15 yyjson keeps the plain
 *   notation and integral values as "d.0"), at least 1e-6 in magnitude or zero (below, yyjson
 *   writes an exponent), no trailing zero after the point unless the fraction is "0", and the
 *   significant digits yyjson would choose (shortest_digits). */
static const unsigned char *number(const unsigned char *p, const unsigned char *end) {
    const unsigned char *start = p;
    if (p < end && *p == '-') p++;
    const unsigned char *integer = p;
    while (p < end && is_digit(*p)) p++;
    Py_ssize_t integer_digits = p - integer;
    if (integer_digits == 0 || (integer_digits > 1 && *integer == '0')) return NULL;
    if (p < end && (*p == 'e' || *p == 'E')) return NULL;
    if (p == end || *p != '.') {
        if (integer_digits > 18) return NULL;
        if (start != integer && integer_digits == 1 && *integer == '0') return NULL; /* -0 */
        return p;
    }
    p++; /* the point */
    const unsigned char *fraction = p;
    while (p < end && is_digit(*p)) p++;
    Py_ssize_t fraction_digits = p - fraction;
    if (fraction_digits == 0 || fraction_digits > 40) return NULL;
    if (p < end && (*p == 'e' || *p == 'E')) return NULL;
    if (integer_digits > 15) return NULL;
    if (p[-1] == '0' && fraction_digits > 1) return NULL; /* "1.50": yyjson writes 1.5 */
    /* significant digits: from the first non-zero digit to the last non-zero one */
    char digits[64];
    int n = 0;
    for (const unsigned char *q = integer; q < p; q++)
        if (*q != '.' && (n > 0 || *q != '0')) digits[n++] = (char)*q;
    while (n > 0 && digits[n - 1] == '0') n--; /* integral: 100.0 has the digit "1" */
    if (n == 0) return (fraction_digits == 1) ? p : NULL; /* 0.0 and -0.0 */
    if (integer_digits == 1 && *integer == '0') {
        Py_ssize_t zeros = 0; /* below 1e-6 yyjson writes an exponent */
        while (fraction[zeros] == '0') zeros++;
        if (zeros > 5) return NULL;
    }
    char text[96];
    Py_ssize_t length = p - integer;
    if (length >= (Py_ssize_t)sizeof text) return NULL;
    memcpy(text, integer, (size_t)length);
    text[length] = '\0';
    double x = strtod(text, NULL);
    if (!shortest_digits(x, digits, n)) return NULL;
    return p;
}

static const unsigned char *object(Scan *scan, const unsigned char *p, int node, int depth) {
    const unsigned char *keys[MAX_KEYS], *end = scan->end;
    Py_ssize_t key_lengths[MAX_KEYS];
    int count = 0;
    p++; /* { */
    if (p < end && *p == '}') return p + 1;
    for (;;) {
        if (p >= end || *p != '"') return NULL;
        const unsigned char *key = p + 1, *after = string(scan, p);
        if (after == NULL) return NULL;
        Py_ssize_t key_length = after - 1 - key;
        for (int i = 0; i < count; i++)
            if (key_lengths[i] == key_length && memcmp(keys[i], key, (size_t)key_length) == 0)
                return NULL; /* a duplicate key */
        if (count == MAX_KEYS) return NULL;
        keys[count] = key;
        key_lengths[count++] = key_length;
        p = after;
        if (p >= end || *p != ':') return NULL;
        p++;
        int child = node >= 0 ? child_of(scan->tree, node, (const char *)key, key_length) : -1;
        const unsigned char *start = p;
        p = value(scan, p, child, depth + 1);
        if (p == NULL) return NULL;
        if (child >= 0 && scan->tree->nodes[child].target >= 0) {
            int target = scan->tree->nodes[child].target;
            scan->starts[target] = (int32_t)(start - scan->line);
            scan->lengths[target] = (int32_t)(p - start);
        }
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p < end && *p == '}') return p + 1;
        return NULL;
    }
}

static const unsigned char *array(Scan *scan, const unsigned char *p, int depth) {
    const unsigned char *end = scan->end;
    p++; /* [ */
    if (p < end && *p == ']') return p + 1;
    for (;;) {
        p = value(scan, p, -1, depth + 1);
        if (p == NULL) return NULL;
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p < end && *p == ']') return p + 1;
        return NULL;
    }
}

static const unsigned char *literal(const unsigned char *p, const unsigned char *end,
                                    const char *word, size_t length) {
    if ((size_t)(end - p) < length || memcmp(p, word, length) != 0) return NULL;
    return p + length;
}

static const unsigned char *value(Scan *scan, const unsigned char *p, int node, int depth) {
    const unsigned char *end = scan->end;
    if (p >= end || depth > MAX_DEPTH) return NULL;
    switch (*p) {
        case '{':
            return object(scan, p, node, depth);
        case '[':
            return array(scan, p, depth);
        case '"':
            return string(scan, p);
        case 't':
            return literal(p, end, "true", 4);
        case 'f':
            return literal(p, end, "false", 5);
        case 'n':
            return literal(p, end, "null", 4);
        default:
            return number(p, end);
    }
}

/* One line: its category; for SCANNED, the offsets in the line (-1: absent) and lengths of the
 * paths' values and which needles it contains. */
static int scan_line(Scan *scan, int paths, const unsigned char *line, Py_ssize_t length) {
    if (length > INT32_MAX) return REFUSED; /* offsets into the line are int32 */
    if (length >= 2048 && !plain_and_screened(line, length)) return SKIPPED;
    if (length == 0 || line[0] != '{') return plain_and_screened(line, length) ? REFUSED : SKIPPED;
    for (int i = 0; i < paths; i++) scan->starts[i] = -1;
    for (Py_ssize_t k = 0; k < scan->needle_count; k++) scan->found[k] = 0;
    scan->line = line;
    scan->end = line + length;
    scan->skipped = 0;
    const unsigned char *end = value(scan, line, 0, 1);
    if (scan->skipped) return SKIPPED;
    if (end == line + length) return SCANNED;
    /* refused: a line the common query would not claim anyway can skip it */
    return plain_and_screened(line, length) ? REFUSED : SKIPPED;
}

/* --- The Python entry ------------------------------------------------------------------------ */

static const char scan_doc[] =
    "scan(offsets, data, paths, wide, needles) -> (categories, scanned, columns, mentions)\n\n"
    "offsets: the Arrow offsets of the lines (int32, or int64 when wide), one more than the\n"
    "lines; data: the string data they index; paths: JSON paths ('$.a.b'); needles: strings\n"
    "of the form '\"word\"'.\n"
    "categories: bytes, one per line: 0 skipped (kairos_plain_line AND kairos_screened is\n"
    "false), 1 scanned, 2 refused. scanned: the number of scanned lines. columns: per path,\n"
    "(offsets, data, validity, null_count) of an Arrow string array over the scanned lines\n"
    "(int32 offsets, validity bits LSB first). mentions: per needle, bytes with 1 where the\n"
    "scanned line contains it.";

typedef struct {
    Py_ssize_t lines, paths, needles;
    const unsigned char *data;
    const void *offsets;
    int wide;
    const Tree *tree;
    const char *const *needle_texts;
    const Py_ssize_t *needle_lengths;
    unsigned char *categories;
    int32_t *starts, *lengths; /* lines x paths */
    unsigned char *found;      /* lines x needles */
    Py_ssize_t *totals;        /* per path: bytes of the scanned values */
    Py_ssize_t scanned;
} Job;

static Py_ssize_t line_start(const Job *job, Py_ssize_t i) {
    return job->wide ? (Py_ssize_t)((const int64_t *)job->offsets)[i]
                     : (Py_ssize_t)((const int32_t *)job->offsets)[i];
}

/* Pass 1 (no GIL): categories, and the spans of the scanned lines, packed in their order. */
static void scan_all(Job *job) {
    locale_t c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0); /* strtod, snprintf */
    locale_t previous = c_locale ? uselocale(c_locale) : (locale_t)0;
    Scan scan = {.tree = job->tree,
                 .needles = job->needle_texts,
                 .needle_lengths = job->needle_lengths,
                 .needle_count = job->needles};
    for (Py_ssize_t i = 0; i < job->lines; i++) {
        Py_ssize_t a = line_start(job, i), b = line_start(job, i + 1), row = job->scanned;
        scan.starts = job->starts + row * job->paths;
        scan.lengths = job->lengths + row * job->paths;
        scan.found = job->found + row * job->needles;
        int category = scan_line(&scan, (int)job->paths, job->data + a, b - a);
        job->categories[i] = (unsigned char)category;
        if (category != SCANNED) continue;
        for (Py_ssize_t p = 0; p < job->paths; p++)
            if (scan.starts[p] >= 0) job->totals[p] += scan.lengths[p];
        job->scanned++;
    }
    if (c_locale) {
        uselocale(previous);
        freelocale(c_locale);
    }
}

typedef struct {
    int32_t *offsets;
    char *data;
    unsigned char *valid;
    Py_ssize_t size, nulls;
} Column;

/* Pass 2 (no GIL): the values copied into the columns, line by line. */
static void copy_all(const Job *job, Column *columns, unsigned char **mentions) {
    Py_ssize_t row = 0;
    for (Py_ssize_t p = 0; p < job->paths; p++) columns[p].offsets[0] = 0;
    for (Py_ssize_t i = 0; i < job->lines; i++) {
        if (job->categories[i] != SCANNED) continue;
        const unsigned char *line = job->data + line_start(job, i);
        const int32_t *starts = job->starts + row * job->paths;
        const int32_t *lengths = job->lengths + row * job->paths;
        for (Py_ssize_t p = 0; p < job->paths; p++) {
            Column *column = &columns[p];
            if (starts[p] >= 0) {
                memcpy(column->data + column->size, line + starts[p], (size_t)lengths[p]);
                column->size += lengths[p];
                column->valid[row >> 3] |= (unsigned char)(1u << (row & 7));
            } else {
                column->nulls++;
            }
            column->offsets[row + 1] = (int32_t)column->size;
        }
        for (Py_ssize_t k = 0; k < job->needles; k++)
            mentions[k][row] = job->found[row * job->needles + k];
        row++;
    }
}

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offsets_view, data_view;
    PyObject *path_list, *needle_list, *result = NULL;
    int wide;
    if (!PyArg_ParseTuple(args, "y*y*O!pO!", &offsets_view, &data_view, &PyList_Type, &path_list,
                          &wide, &PyList_Type, &needle_list))
        return NULL;
    Job job = {0};
    Tree tree;
    const char *texts[MAX_PATHS], *needles[MAX_PATHS];
    Py_ssize_t text_lengths[MAX_PATHS], needle_lengths[MAX_PATHS];
    PyObject *columns = NULL, *mentions = NULL, *categories = NULL;
    PyObject *buffers[3 * MAX_PATHS] = {NULL}; /* per path: offsets, data, validity */
    Column outputs[MAX_PATHS];
    unsigned char *mention_bytes[MAX_PATHS];

    Py_ssize_t width = wide ? 8 : 4;
    job.paths = PyList_GET_SIZE(path_list);
    job.needles = PyList_GET_SIZE(needle_list);
    if (offsets_view.len % width != 0 || offsets_view.len < width || job.paths > MAX_PATHS ||
        job.needles > MAX_PATHS) {
        PyErr_SetString(PyExc_ValueError, "bad offsets, or too many paths or needles");
        goto done;
    }
    for (Py_ssize_t p = 0; p < job.paths; p++) {
        texts[p] = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(path_list, p), &text_lengths[p]);
        if (texts[p] == NULL) goto done;
    }
    for (Py_ssize_t k = 0; k < job.needles; k++) {
        needles[k] = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(needle_list, k), &needle_lengths[k]);
        if (needles[k] == NULL) goto done;
        if (needle_lengths[k] < 2 || needles[k][0] != '"' ||
            needles[k][needle_lengths[k] - 1] != '"' ||
            memchr(needles[k] + 1, '"', (size_t)needle_lengths[k] - 2) != NULL ||
            memchr(needles[k], '\\', (size_t)needle_lengths[k]) != NULL) {
            PyErr_SetString(PyExc_ValueError, "needles must read \"word\" (no quote or \\ inside)");
            goto done;
        }
    }
    if (build_tree(&tree, texts, text_lengths, (int)job.paths) != 0) {
        PyErr_SetString(PyExc_ValueError, "paths must read $.key.key... (each once)");
        goto done;
    }
    job.lines = offsets_view.len / width - 1;
    job.data = data_view.buf;
    job.offsets = offsets_view.buf;
    job.wide = wide;
    job.tree = &tree;
    job.needle_texts = needles;
    job.needle_lengths = needle_lengths;
    for (Py_ssize_t i = 0; i <= job.lines; i++) {
        Py_ssize_t at = line_start(&job, i);
        if (at < 0 || at > data_view.len || (i > 0 && at < line_start(&job, i - 1))) {
            PyErr_SetString(PyExc_ValueError, "offsets out of order or past the data");
            goto done;
        }
    }
    categories = PyBytes_FromStringAndSize(NULL, job.lines);
    if (categories == NULL) goto done;
    job.categories = (unsigned char *)PyBytes_AS_STRING(categories);
    size_t lines = (size_t)(job.lines ? job.lines : 1);
    job.starts = PyMem_RawMalloc(lines * (size_t)(job.paths + 1) * sizeof(int32_t));
    job.lengths = PyMem_RawMalloc(lines * (size_t)(job.paths + 1) * sizeof(int32_t));
    job.found = PyMem_RawMalloc(lines * (size_t)(job.needles + 1));
    job.totals = PyMem_RawCalloc((size_t)job.paths + 1, sizeof(Py_ssize_t));
    if (!job.starts || !job.lengths || !job.found || !job.totals) {
        PyErr_NoMemory();
        goto done;
    }

    Py_BEGIN_ALLOW_THREADS;
    scan_all(&job);
    Py_END_ALLOW_THREADS;

    Py_ssize_t rows = job.scanned, bitmap = (rows + 7) / 8;
    mentions = PyList_New(job.needles);
    if (mentions == NULL) goto done;
    for (Py_ssize_t p = 0; p < job.paths; p++) {
        if (job.totals[p] > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "values over 2 GB: use smaller blocks");
            goto done;
        }
        buffers[3 * p] = PyBytes_FromStringAndSize(NULL, (rows + 1) * 4);
        buffers[3 * p + 1] = PyBytes_FromStringAndSize(NULL, job.totals[p]);
        buffers[3 * p + 2] = PyBytes_FromStringAndSize(NULL, bitmap);
        if (!buffers[3 * p] || !buffers[3 * p + 1] || !buffers[3 * p + 2]) goto done;
        outputs[p] = (Column){(int32_t *)PyBytes_AS_STRING(buffers[3 * p]),
                              PyBytes_AS_STRING(buffers[3 * p + 1]),
                              (unsigned char *)PyBytes_AS_STRING(buffers[3 * p + 2]), 0, 0};
        memset(outputs[p].valid, 0, (size_t)bitmap);
    }
    for (Py_ssize_t k = 0; k < job.needles; k++) {
        PyObject *flags = PyBytes_FromStringAndSize(NULL, rows);
        if (flags == NULL) goto done;
        PyList_SET_ITEM(mentions, k, flags);
        mention_bytes[k] = (unsigned char *)PyBytes_AS_STRING(flags);
    }

    Py_BEGIN_ALLOW_THREADS;
    copy_all(&job, outputs, mention_bytes);
    Py_END_ALLOW_THREADS;

    columns = PyList_New(job.paths);
    if (columns == NULL) goto done;
    for (Py_ssize_t p = 0; p < job.paths; p++) {
        PyObject *column = Py_BuildValue("(OOOn)", buffers[3 * p], buffers[3 * p + 1],
                                         buffers[3 * p + 2], outputs[p].nulls);
        if (column == NULL) goto done;
        PyList_SET_ITEM(columns, p, column);
    }
    result = Py_BuildValue("(OnOO)", categories, job.scanned, columns, mentions);

done:
    for (Py_ssize_t i = 0; i < 3 * MAX_PATHS; i++) Py_XDECREF(buffers[i]);
    Py_XDECREF(columns);
    Py_XDECREF(mentions);
    Py_XDECREF(categories);
    PyMem_RawFree(job.starts);
    PyMem_RawFree(job.lengths);
    PyMem_RawFree(job.found);
    PyMem_RawFree(job.totals);
    PyBuffer_Release(&offsets_view);
    PyBuffer_Release(&data_view);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_jsonscan",
    .m_doc = "The generic per-line part of features.vectorised's common-shape query, in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__jsonscan(void) {
    init_tables();
    return PyModule_Create(&module);
}
