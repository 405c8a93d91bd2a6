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
 *
 * Given the contract's names and channels, it also decides the common query for a scanned line
 * and builds its row (common_row): CLAIMED or LEFT, or SCANNED when the query must decide.
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
#define CLAIMED 3 /* scanned, and its common-shape row is built here (see common_row) */
#define LEFT 4    /* scanned, and the common-shape query would not claim it */

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
    unsigned char length, verdict; /* length 0: empty */
    char text[30];
} NumberMemo;

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
    /* shortest_digits() verdicts on 16- and 17-digit decimals (printf and strtod, ~1 µs), by
     * their text: a value that repeats (a rate, a score) is checked once a scan */
    NumberMemo memo[64];
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
static const unsigned char *number(Scan *scan, const unsigned char *p, const unsigned char *end) {
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
    if (n <= 15) return p; /* shortest_digits() needs no value for these */
    if (n > 17) return NULL;
    Py_ssize_t length = p - integer;
    unsigned hash = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < length; i++) hash = (hash ^ integer[i]) * 16777619u;
    NumberMemo *memo = &scan->memo[hash % 64];
    if (memo->length == length && memcmp(memo->text, integer, (size_t)length) == 0)
        return memo->verdict ? p : NULL;
    char text[96];
    if (length < 0 || length >= (Py_ssize_t)sizeof text) return NULL;
    memcpy(text, integer, (size_t)length);
    text[length] = '\0';
    int verdict = shortest_digits(strtod(text, NULL), digits, n);
    if (length <= (Py_ssize_t)sizeof memo->text) {
        memo->length = (unsigned char)length;
        memo->verdict = (unsigned char)verdict;
        memcpy(memo->text, integer, (size_t)length);
    }
    return verdict ? p : NULL;
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
            return number(scan, p, end);
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

/* --- The common shape's rows ----------------------------------------------------------------- */
/* features/vectorised.py's common-shape query (_COMMON_TEMPLATE), for a scanned line, computed
 * from the same JSON texts: the row when the query claims the line (CLAIMED), LEFT when one of
 * its claim conditions is false, SCANNED (the query decides) for what this code does not
 * compute: timestamps in other forms than the Z and +HH:MM ones, or dates it would check.
 * It also claims two shapes the query leaves to the reference (see common_row), with the
 * reference's row. The names, channels and device types are the contract's, passed in by
 * features.vectorised (the same lists the SQL macros are written from); tests/test_jsonscan.py
 * holds the rows and verdicts to the query's and the reference's. A LEFT line goes on to the
 * general query or the reference, so a wrong LEFT would only cost time; a CLAIMED row must be
 * exact. */

/* The values read, in this order (features.vectorised._ROW_FIELDS names each). */
enum {
    F_TYPE, F_MESSAGE_ID, F_TIMESTAMP, F_USER_ID, F_ANONYMOUS_ID, F_EVENT, F_BATCH,
    F_PROPERTIES, F_CONTEXT_TRAITS, F_CONTEXT_EMAIL, F_CONTEXT_PHONE, F_DEVICE_ID,
    F_DEVICE_TYPE, F_APP, F_ORDER_ID, F_PRODUCT_ID, F_CATEGORY, F_CURRENCY, F_SEND_ID,
    F_CAMPAIGN_ID, F_CHANNEL, F_REVENUE, F_PRICE, F_QUANTITY,
    /* read by the reference but not by the common query */
    F_TRAITS, F_TRAITS_EMAIL, F_TRAITS_PHONE, F_TOTAL, F_VALUE, F_PRODUCTS, FIELD_COUNT
};
/* The string columns of a row, in this order (features.vectorised._ROW_STRINGS). */
enum {
    R_MESSAGE_ID, R_TYPE, R_EVENT, R_CHANNEL, R_USER_ID, R_ANONYMOUS_ID, R_EMAIL, R_PHONE,
    R_DEVICE_ID, R_ORDER_ID, R_PRODUCT_ID, R_CATEGORY, R_CURRENCY, R_SEND_ID, R_CAMPAIGN_ID,
    R_PROPERTIES, R_TRAITS, ROW_STRINGS
};
/* The common shape's text fields: each must be a string or absent (_COMMON_TEXTS). */
static const int text_fields[] = {F_MESSAGE_ID, F_USER_ID,  F_ANONYMOUS_ID, F_DEVICE_ID,
                                  F_ORDER_ID,   F_PRODUCT_ID, F_CATEGORY,   F_CURRENCY,
                                  F_SEND_ID,    F_CAMPAIGN_ID};
#define MAX_NAMES 256

typedef struct {
    const char *text;
    Py_ssize_t length;
} Text;

typedef struct {
    int field[FIELD_COUNT];           /* index of each value among the paths */
    Text canonical[MAX_NAMES];        /* CANONICAL_EVENTS */
    Text implied[MAX_NAMES];          /* the channel each implies (text NULL: none) */
    unsigned char specific[MAX_NAMES]; /* in CHANNEL_SPECIFIC */
    int canonical_count;
    Text kinds[8], kind_names[8]; /* the fixed event name of a message type (page, screen) */
    int kind_count;
    Text channels[MAX_NAMES]; /* CHANNELS */
    int channel_count;
    Text app_device_types[MAX_NAMES]; /* lower case */
    int app_device_type_count;
    Text rare[MAX_NAMES]; /* RARE_PROPERTIES (no '"' inside) */
    int rare_count;
    int mention_device, mention_context; /* needle indices of "device" and "context" */
    Text extra_paths[MAX_PATHS]; /* paths read for the rows only (after the column paths) */
    int extra_count;
} Contract;

typedef struct {
    const unsigned char *text; /* NULL: SQL NULL */
    int32_t length;
} Piece;

typedef struct {
    Piece strings[ROW_STRINGS];
    int64_t timestamp; /* microseconds since 1970 */
    double revenue;
    unsigned char has_revenue, other_identifier;
} Row;

static int same(const unsigned char *text, Py_ssize_t length, const char *word, Py_ssize_t n) {
    return length == n && memcmp(text, word, (size_t)n) == 0;
}

#define SAME(piece, word) same((piece).text, (piece).length, word, (Py_ssize_t)sizeof(word) - 1)

/* A JSON string's content; on a scanned plain line that is its value. */
static Piece unquoted(Piece json) { return (Piece){json.text + 1, json.length - 2}; }

static int is_string(Piece json) { return json.text != NULL && json.text[0] == '"'; }

/* kairos_is_json_number: on a valid JSON value, a number starts with '-' or a digit. */
static int is_number(Piece json) {
    return json.text != NULL && (json.text[0] == '-' || is_digit(json.text[0]));
}

/* regexp_full_match(j, '"[!#-?A-\[\]-~]+@[!#-?A-\[\]-~]+\.[!#-\-/-?A-\[\]-~]+"'): one '@',
 * something before it, and after it something, a '.' and something without a '.'. */
static int email_class(unsigned char c) {
    return c == '!' || (c >= '#' && c <= '?') || (c >= 'A' && c <= '[') || (c >= ']' && c <= '~');
}

static int plain_email(Piece json) {
    if (!is_string(json)) return 0;
    Piece value = unquoted(json);
    int32_t at = -1, dot = -1;
    for (int32_t i = 0; i < value.length; i++) {
        unsigned char c = value.text[i];
        if (c == '@') {
            if (at >= 0) return 0;
            at = i;
        } else if (!email_class(c)) {
            return 0;
        } else if (c == '.') {
            dot = i;
        }
    }
    return at >= 1 && dot >= at + 2 && dot <= value.length - 2;
}

/* kairos_truthy(app) of a present value */
static int truthy(Piece json) {
    if (SAME(json, "null") || SAME(json, "false") || SAME(json, "{}") || SAME(json, "[]") ||
        SAME(json, "\"\""))
        return 0;
    unsigned char c = json.text[0];
    if (SAME(json, "true") || c == '"' || c == '{' || c == '[') return 1;
    char text[64]; /* a number token: at most 18 digits, or a decimal accepted by number() */
    if (json.length >= (int32_t)sizeof text) return -1;
    memcpy(text, json.text, (size_t)json.length);
    text[json.length] = '\0';
    return strtod(text, NULL) != 0;
}

static double number_value(Piece json) {
    char text[96];
    if (json.length >= (int32_t)sizeof text) return NAN; /* number() takes at most 56 bytes */
    memcpy(text, json.text, (size_t)json.length);
    text[json.length] = '\0';
    return strtod(text, NULL);
}

static int64_t days_from_civil(int64_t year, int month, int day) {
    year -= month <= 2;
    int64_t era = (year >= 0 ? year : year - 399) / 400;
    int64_t year_of_era = year - era * 400;
    int64_t day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

static int digits_at(const unsigned char *p, int n, int *value) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(p[i])) return 0;
        v = v * 10 + (p[i] - '0');
    }
    *value = v;
    return 1;
}

/* The query's timestamp: its fast path '"YYYY-MM-DDTHH:MM:SS(.f{1,6})?Z"' cast to TIMESTAMP, and
 * kairos_utc_timestamp's '"YYYY-MM-DDTHH:MM:SS(.f{1,9})?(Z|+HH:MM|-HH:MM)"' cast to
 * TIMESTAMPTZ (the local time less the offset), for hours to 23 and minutes and seconds to 59
 * (both patterns' limits). Only up to 6 fractional digits, dates that are valid (the casts
 * refuse 02-30) and instants from 1970 to 2099 (the claim's range) are computed here; for
 * anything else: 0, and the query decides. */
static int fast_timestamp(Piece json, int64_t *micros) {
    const unsigned char *j = json.text;
    int32_t n = json.length;
    if (j == NULL || n < 22 || j[0] != '"' || j[n - 1] != '"') return 0;
    int year, month, day, hour, minute, second, fraction = 0, offset = 0;
    if (!digits_at(j + 1, 4, &year) || j[5] != '-' || !digits_at(j + 6, 2, &month) ||
        j[8] != '-' || !digits_at(j + 9, 2, &day) || j[11] != 'T' ||
        !digits_at(j + 12, 2, &hour) || j[14] != ':' || !digits_at(j + 15, 2, &minute) ||
        j[17] != ':' || !digits_at(j + 18, 2, &second))
        return 0;
    if (hour > 23 || minute > 59 || second > 59) return 0;
    int32_t at = 20; /* after the seconds */
    if (j[at] == '.') {
        int count = 0;
        while (at + 1 + count < n && is_digit(j[at + 1 + count])) count++;
        if (count < 1 || count > 6 || !digits_at(j + at + 1, count, &fraction)) return 0;
        for (int k = count; k < 6; k++) fraction *= 10;
        at += 1 + count;
    }
    if (at == n - 2 && j[at] == 'Z') {
        offset = 0;
    } else if (at == n - 7 && (j[at] == '+' || j[at] == '-') && j[at + 3] == ':') {
        int offset_hours, offset_minutes;
        if (!digits_at(j + at + 1, 2, &offset_hours) || !digits_at(j + at + 4, 2, &offset_minutes))
            return 0;
        if (offset_hours > 23 || offset_minutes > 59) return 0;
        offset = (offset_hours * 60 + offset_minutes) * 60 * (j[at] == '-' ? -1 : 1);
    } else {
        return 0;
    }
    if (year < 1970 || year > 2099 || month < 1 || month > 12 || day < 1) return 0;
    static const int month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > month_days[month - 1] + (month == 2 && leap)) return 0;
    int64_t seconds =
        days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset;
    /* 2100-01-01T00:00:00Z */
    if (seconds < 0 || seconds >= days_from_civil(2100, 1, 1) * 86400) return 0;
    *micros = seconds * 1000000 + fraction;
    return 1;
}

static int in_texts(Piece value, const Text *texts, int count) {
    for (int i = 0; i < count; i++)
        if (same(value.text, value.length, texts[i].text, texts[i].length)) return i;
    return -1;
}

static Piece text_piece(Text text) {
    return (Piece){(const unsigned char *)text.text, (int32_t)text.length};
}

/* contains(properties_json, '"key":') for a rare key, on flat properties (no '{' inside) of a
 * scanned line: there a string has no quote inside, and a string followed by ':' is a key of
 * the object itself, so this is "the object has one of these keys", read key by key. */
static int has_rare_key(const Contract *contract, Piece properties) {
    const unsigned char *p = properties.text, *end = properties.text + properties.length;
    while ((p = memchr(p, '"', (size_t)(end - p))) != NULL) {
        const unsigned char *content = p + 1;
        const unsigned char *close = memchr(content, '"', (size_t)(end - content));
        if (close == NULL) return 1; /* cannot happen on a scanned line; leave it to SQL */
        if (close + 1 < end && close[1] == ':')
            for (int k = 0; k < contract->rare_count; k++) {
                const Text *key = &contract->rare[k];
                if (same(content, close - content, key->text, key->length)) return 1;
            }
        p = close + 1;
    }
    return 0;
}

/* Any '{' in [from, to)? */
static int has_brace(const unsigned char *from, const unsigned char *to) {
    return to > from && memchr(from, '{', (size_t)(to - from)) != NULL;
}

/* _number() of a product's price or quantity as JSON text: 1 with the value for a JSON number
 * (or *absent when absent and given), 0 for None (null, or absent without a default), -1 for
 * anything else (left to Python). */
static int product_number(Piece json, const double *absent, double *value) {
    if (json.text == NULL) {
        if (absent == NULL) return 0; /* None */
        *value = *absent;
        return 1;
    }
    if (SAME(json, "null")) return 0;
    if (!is_number(json)) return -1;
    *value = number_value(json);
    return 1;
}

/* The reference's products fallback (_revenue), for an array of flat objects: the sum of
 * price x quantity (an absent quantity is 1) of the products where both are numbers, a left
 * fold from 0 as float(sum(...)) does; `count` of them. Also the first product's category
 * (absent: NULL). -1 for anything else: not an array of flat objects, prices or quantities
 * that are not numbers or null, or more than two totals (Python 3.12's sum() of floats is
 * compensated, so only up to two terms is it the plain fold on every version). */
static int products_total(Piece products, Piece *first_category, double *total, int *count) {
    const unsigned char *p = products.text, *end = products.text + products.length - 1;
    *total = 0.0;
    *count = 0;
    *first_category = (Piece){NULL, 0};
    if (products.length < 2 || *p != '[' || *end != ']') return -1;
    p++;
    for (int index = 0; p < end; index++) {
        Piece price = {NULL, 0}, quantity = {NULL, 0}, category = {NULL, 0};
        if (*p != '{') return -1;
        p++;
        while (*p != '}') {
            if (*p != '"') return -1;
            const unsigned char *key = p + 1, *close = memchr(key, '"', (size_t)(end - key));
            if (close == NULL || close[1] != ':') return -1;
            const unsigned char *start = close + 2, *q = start;
            if (*q == '"') {
                const unsigned char *string_end = memchr(q + 1, '"', (size_t)(end - q - 1));
                if (string_end == NULL) return -1;
                q = string_end + 1;
            } else {
                while (q < end && *q != ',' && *q != '}') {
                    if (*q == '{' || *q == '[') return -1;
                    q++;
                }
            }
            Piece member = {start, (int32_t)(q - start)};
            Py_ssize_t key_length = close - key;
            if (same(key, key_length, "price", 5)) price = member;
            if (same(key, key_length, "quantity", 8)) quantity = member;
            if (same(key, key_length, "category", 8)) category = member;
            if (q >= end) return -1;
            p = *q == ',' ? q + 1 : q;
        }
        p++; /* } */
        if (index == 0) *first_category = category;
        static const double one = 1.0;
        double price_value = 0.0, quantity_value = 0.0;
        int has_price = product_number(price, NULL, &price_value);
        int has_quantity = product_number(quantity, &one, &quantity_value);
        if (has_price < 0 || has_quantity < 0) return -1;
        if (has_price && has_quantity) {
            *total = *total + price_value * quantity_value;
            if (++*count > 2) return -1;
        }
        if (*p == ',') p++;
        else if (p != end) return -1;
    }
    return 0;
}

/* The common query's verdict on a scanned line, and its row when it claims it. Beyond the
 * common shape, lines the query leaves to the reference are claimed in two shapes whose row
 * is the reference's (held to it by tests/test_vectorised.py and tests/test_jsonscan.py):
 * identify messages (their own flat traits), and properties with products (flat objects),
 * total or value (_revenue()'s order: revenue, total, value, price x quantity, products). */
static int common_row(const Contract *contract, const unsigned char *line, const int32_t *starts,
                      const int32_t *lengths, const unsigned char *found, Row *row) {
    Piece v[FIELD_COUNT];
    for (int f = 0; f < FIELD_COUNT; f++) {
        int path = contract->field[f];
        v[f] = starts[path] >= 0 ? (Piece){line + starts[path], lengths[path]} : (Piece){NULL, 0};
    }
    /* shape_ok */
    Piece type = v[F_TYPE];
    int identify = SAME(type, "\"identify\"");
    if (!(SAME(type, "\"track\"") || SAME(type, "\"page\"") || SAME(type, "\"screen\"") ||
          identify))
        return LEFT;
    if (v[F_BATCH].text != NULL) return LEFT;
    /* identify reads its own traits, every other type context.traits */
    Piece properties = v[F_PROPERTIES], products = v[F_PRODUCTS];
    Piece context_traits = v[F_CONTEXT_TRAITS], traits = identify ? v[F_TRAITS] : context_traits;
    if (properties.text != NULL) {
        const unsigned char *after = properties.text + properties.length;
        if (properties.text[0] != '{') return LEFT;
        if (products.text != NULL ? has_brace(properties.text + 1, products.text) ||
                                        has_brace(products.text + products.length, after)
                                  : has_brace(properties.text + 1, after))
            return LEFT; /* nested objects only among the products */
        if (has_rare_key(contract, properties)) return LEFT;
    }
    if (traits.text != NULL && (traits.text[0] != '{' || has_brace(traits.text + 1,
                                                                   traits.text + traits.length)))
        return LEFT;
    if (context_traits.text != NULL &&
        (context_traits.text[0] != '{' ||
         has_brace(context_traits.text + 1, context_traits.text + context_traits.length)))
        return LEFT;
    int in_device = v[F_DEVICE_ID].text != NULL || v[F_DEVICE_TYPE].text != NULL;
    if (!in_device && found[contract->mention_device]) return LEFT;
    if (!in_device && context_traits.text == NULL && v[F_APP].text == NULL &&
        found[contract->mention_context])
        return LEFT;
    for (size_t i = 0; i < sizeof text_fields / sizeof *text_fields; i++) {
        Piece text = v[text_fields[i]];
        if (text.text != NULL && text.text[0] != '"') return LEFT;
    }
    if (v[F_MESSAGE_ID].text == NULL || SAME(v[F_MESSAGE_ID], "\"\"")) return LEFT;
    Piece email = identify ? v[F_TRAITS_EMAIL] : v[F_CONTEXT_EMAIL];
    int has_email = email.text != NULL && !SAME(email, "null") && !SAME(email, "\"\"");
    if (has_email && !plain_email(email)) return LEFT;
    /* _revenue(): the first of revenue / total / value present and not null, a number; else
     * price x quantity of numbers (an absent quantity is 1); else the products' total */
    Piece amount = {NULL, 0}, price = v[F_PRICE], quantity = v[F_QUANTITY];
    static const int amount_fields[] = {F_REVENUE, F_TOTAL, F_VALUE};
    for (int i = 0; i < 3 && amount.text == NULL; i++)
        if (v[amount_fields[i]].text != NULL && !SAME(v[amount_fields[i]], "null"))
            amount = v[amount_fields[i]];
    if (amount.text != NULL && !is_number(amount)) return LEFT;
    if (amount.text == NULL && price.text != NULL &&
        !(is_number(price) && (quantity.text == NULL || is_number(quantity))))
        return LEFT;
    Piece category = v[F_CATEGORY], first_category = {NULL, 0};
    double products_sum = 0.0;
    int product_totals = 0;
    if (products.text != NULL &&
        products_total(products, &first_category, &products_sum, &product_totals) != 0)
        return LEFT;
    /* properties.get("category", first_product.get("category")) */
    if (category.text == NULL) category = first_category;
    if (category.text != NULL && !is_string(category)) return LEFT;

    /* kairos_event_name */
    Piece kind = unquoted(type), event = {NULL, 0};
    int canonical = -1;
    if (SAME(kind, "track")) {
        if (is_string(v[F_EVENT])) {
            event = unquoted(v[F_EVENT]);
            canonical = in_texts(event, contract->canonical, contract->canonical_count);
        }
        if (canonical < 0) return LEFT;
    } else {
        int k = in_texts(kind, contract->kinds, contract->kind_count);
        if (k < 0) return LEFT;
        event = text_piece(contract->kind_names[k]);
        canonical = in_texts(event, contract->canonical, contract->canonical_count);
    }
    /* kairos_channel */
    Piece implied = canonical >= 0 && contract->implied[canonical].text != NULL
                        ? text_piece(contract->implied[canonical])
                        : (Piece){NULL, 0};
    Piece stated = v[F_CHANNEL], device_type = v[F_DEVICE_TYPE], channel = {NULL, 0};
    static const Text app = {"app", 3}, web = {"web", 3};
    if (canonical >= 0 && contract->specific[canonical]) {
        channel = implied;
    } else if (stated.text != NULL && !SAME(stated, "null")) {
        int c = is_string(stated)
                    ? in_texts(unquoted(stated), contract->channels, contract->channel_count)
                    : -1;
        if (c >= 0) channel = text_piece(contract->channels[c]);
    } else if (implied.text != NULL) {
        channel = implied;
    } else {
        int app_truthy = v[F_APP].text != NULL ? truthy(v[F_APP]) : 0;
        if (app_truthy < 0) return SCANNED;
        if (SAME(kind, "screen") || app_truthy) {
            channel = text_piece(app);
        } else if (!is_string(device_type)) {
            channel = text_piece(web);
        } else {
            Piece value = unquoted(device_type);
            unsigned char lowered[64];
            int printable = value.length < (int32_t)sizeof lowered;
            for (int32_t i = 0; printable && i < value.length; i++) {
                unsigned char c = value.text[i];
                printable = c >= ' ' && c <= '~' && c != '"' && c != '\\';
                lowered[i] = (unsigned char)lower(c);
            }
            if (printable) {
                Piece lowered_piece = {lowered, value.length};
                int is_app = in_texts(lowered_piece, contract->app_device_types,
                                      contract->app_device_type_count) >= 0;
                channel = text_piece(is_app ? app : web);
            } else if (value.length >= (int32_t)sizeof lowered) {
                return SCANNED; /* not checked here */
            }
        }
    }
    if (channel.text == NULL) return LEFT;

    /* an identifier: other_identifier, or a phone that Python reads */
    int other = (v[F_USER_ID].text != NULL && !SAME(v[F_USER_ID], "\"\"")) ||
                (v[F_ANONYMOUS_ID].text != NULL && !SAME(v[F_ANONYMOUS_ID], "\"\"")) ||
                (v[F_DEVICE_ID].text != NULL && !SAME(v[F_DEVICE_ID], "\"\"")) || has_email;
    Piece phone = identify ? v[F_TRAITS_PHONE] : v[F_CONTEXT_PHONE];
    if (!other && (phone.text == NULL || SAME(phone, "null") || SAME(phone, "\"\""))) return LEFT;

    if (!fast_timestamp(v[F_TIMESTAMP], &row->timestamp)) return SCANNED;

    /* the row */
    static const int row_texts[][2] = {
        {R_USER_ID, F_USER_ID},   {R_ANONYMOUS_ID, F_ANONYMOUS_ID}, {R_DEVICE_ID, F_DEVICE_ID},
        {R_ORDER_ID, F_ORDER_ID}, {R_PRODUCT_ID, F_PRODUCT_ID},     {R_CURRENCY, F_CURRENCY},
        {R_SEND_ID, F_SEND_ID},   {R_CAMPAIGN_ID, F_CAMPAIGN_ID},
    };
    Piece *out = row->strings;
    for (size_t i = 0; i < sizeof row_texts / sizeof *row_texts; i++) {
        Piece text = v[row_texts[i][1]];
        out[row_texts[i][0]] =
            text.text != NULL && !SAME(text, "\"\"") ? unquoted(text) : (Piece){NULL, 0};
    }
    out[R_CATEGORY] =
        category.text != NULL && !SAME(category, "\"\"") ? unquoted(category) : (Piece){NULL, 0};
    out[R_MESSAGE_ID] = unquoted(v[F_MESSAGE_ID]);
    out[R_TYPE] = kind;
    out[R_EVENT] = event;
    out[R_CHANNEL] = channel;
    out[R_EMAIL] = has_email ? unquoted(email) : (Piece){NULL, 0}; /* lower-cased when copied */
    out[R_PHONE] = phone; /* the JSON text, read in Python */
    out[R_PROPERTIES] = properties.text != NULL && !SAME(properties, "{}") ? properties
                                                                            : (Piece){NULL, 0};
    out[R_TRAITS] = traits.text != NULL && !SAME(traits, "{}") ? traits : (Piece){NULL, 0};
    row->other_identifier = (unsigned char)other;
    row->has_revenue = 1;
    if (amount.text != NULL)
        row->revenue = number_value(amount);
    else if (price.text != NULL)
        row->revenue = number_value(price) * (quantity.text != NULL ? number_value(quantity) : 1.0);
    else if (product_totals > 0)
        row->revenue = products_sum;
    else
        row->has_revenue = 0;
    return CLAIMED;
}

/* --- The Python entry ------------------------------------------------------------------------ */

static const char scan_doc[] =
    "scan(offsets, data, paths, wide, needles, contract=None)\n"
    "-> (categories, scanned, columns, mentions, rows)\n\n"
    "offsets: the Arrow offsets of the lines (int32, or int64 when wide), one more than the\n"
    "lines; data: the string data they index; paths: JSON paths ('$.a.b'); needles: strings\n"
    "of the form '\"word\"'; contract: features.vectorised._scan_contract(), or None to build\n"
    "no rows.\n"
    "categories: bytes, one per line: 0 skipped (kairos_plain_line AND kairos_screened is\n"
    "false), 1 scanned, 2 refused; with a contract also 3 claimed (scanned, its common-shape\n"
    "row is in rows) and 4 left (scanned, the common-shape query would not claim it).\n"
    "scanned: the number of lines of category 1. columns: per path, (offsets, data,\n"
    "validity, null_count) of an Arrow string array over those lines (int32 offsets,\n"
    "validity bits LSB first). mentions: per needle, bytes with 1 where such a line contains\n"
    "it. rows (None without a contract): (count, string columns as above in _ROW_STRINGS\n"
    "order, timestamps (int64 microseconds), revenue (float64), revenue validity, revenue\n"
    "null_count, other_identifier (bytes of 0/1)) over the claimed lines.";

typedef struct {
    Py_ssize_t lines, paths, needles;
    Py_ssize_t stride; /* paths read per line: the column paths, then the contract's extra ones */
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
    const Contract *contract; /* NULL: no rows are built (no CLAIMED or LEFT verdicts) */
    Row *rows;                /* the CLAIMED lines' rows, in their order */
    Py_ssize_t row_totals[ROW_STRINGS];
    Py_ssize_t claimed;
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
        scan.starts = job->starts + row * job->stride;
        scan.lengths = job->lengths + row * job->stride;
        scan.found = job->found + row * job->needles;
        int category = scan_line(&scan, (int)job->stride, job->data + a, b - a);
        if (category == SCANNED && job->contract != NULL) {
            Row *out = &job->rows[job->claimed];
            category = common_row(job->contract, job->data + a, scan.starts, scan.lengths,
                                  scan.found, out);
            if (category == CLAIMED) {
                for (int k = 0; k < ROW_STRINGS; k++)
                    if (out->strings[k].text != NULL) job->row_totals[k] += out->strings[k].length;
                job->claimed++;
            }
        }
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

/* Pass 2 (no GIL), rows: the CLAIMED lines' strings copied into their columns (the email
 * lower-cased: lower() of ASCII), the numbers into theirs. */
static void copy_rows(const Job *job, Column *columns, int64_t *timestamps, double *revenue,
                      unsigned char *revenue_valid, Py_ssize_t *revenue_nulls,
                      unsigned char *other_identifier) {
    for (int k = 0; k < ROW_STRINGS; k++) columns[k].offsets[0] = 0;
    for (Py_ssize_t r = 0; r < job->claimed; r++) {
        const Row *row = &job->rows[r];
        for (int k = 0; k < ROW_STRINGS; k++) {
            Column *column = &columns[k];
            Piece piece = row->strings[k];
            if (piece.text != NULL) {
                char *to = column->data + column->size;
                if (k == R_EMAIL)
                    for (int32_t i = 0; i < piece.length; i++) to[i] = (char)lower(piece.text[i]);
                else
                    memcpy(to, piece.text, (size_t)piece.length);
                column->size += piece.length;
                column->valid[r >> 3] |= (unsigned char)(1u << (r & 7));
            } else {
                column->nulls++;
            }
            column->offsets[r + 1] = (int32_t)column->size;
        }
        timestamps[r] = row->timestamp;
        revenue[r] = row->has_revenue ? row->revenue : 0.0;
        if (row->has_revenue)
            revenue_valid[r >> 3] |= (unsigned char)(1u << (r & 7));
        else
            (*revenue_nulls)++;
        other_identifier[r] = row->other_identifier;
    }
}

/* Pass 2 (no GIL): the values copied into the columns, line by line. */
static void copy_all(const Job *job, Column *columns, unsigned char **mentions) {
    Py_ssize_t row = 0;
    for (Py_ssize_t p = 0; p < job->paths; p++) columns[p].offsets[0] = 0;
    for (Py_ssize_t i = 0; i < job->lines; i++) {
        if (job->categories[i] != SCANNED) continue;
        const unsigned char *line = job->data + line_start(job, i);
        const int32_t *starts = job->starts + row * job->stride;
        const int32_t *lengths = job->lengths + row * job->stride;
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

/* An Arrow string column of `rows` values and `total` bytes: its three buffers (offsets, data,
 * validity, zeroed) in buffers[0..2], and the Column that writes them; -1 with an exception. */
static int new_column(PyObject **buffers, Py_ssize_t rows, Py_ssize_t total, Column *column) {
    if (total > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "values over 2 GB: use smaller blocks");
        return -1;
    }
    Py_ssize_t bitmap = (rows + 7) / 8;
    buffers[0] = PyBytes_FromStringAndSize(NULL, (rows + 1) * 4);
    buffers[1] = PyBytes_FromStringAndSize(NULL, total);
    buffers[2] = PyBytes_FromStringAndSize(NULL, bitmap);
    if (!buffers[0] || !buffers[1] || !buffers[2]) return -1;
    *column = (Column){(int32_t *)PyBytes_AS_STRING(buffers[0]), PyBytes_AS_STRING(buffers[1]),
                       (unsigned char *)PyBytes_AS_STRING(buffers[2]), 0, 0};
    memset(column->valid, 0, (size_t)bitmap);
    return 0;
}

/* [(offsets, data, validity, null_count), ...] of `count` columns written by new_column. */
static PyObject *column_list(PyObject **buffers, const Column *columns, Py_ssize_t count) {
    PyObject *list = PyList_New(count);
    if (list == NULL) return NULL;
    for (Py_ssize_t p = 0; p < count; p++) {
        PyObject *column = Py_BuildValue("(OOOn)", buffers[3 * p], buffers[3 * p + 1],
                                         buffers[3 * p + 2], columns[p].nulls);
        if (column == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, p, column);
    }
    return list;
}

static int text_of(PyObject *object, Text *text) {
    if (object == Py_None) {
        *text = (Text){NULL, 0};
        return 0;
    }
    text->text = PyUnicode_AsUTF8AndSize(object, &text->length);
    return text->text == NULL ? -1 : 0;
}

/* A list of str (None allowed when `optional`) into texts; -1 with an exception set. */
static int texts_of(PyObject *list, Text *texts, int *count, int optional) {
    if (!PyList_Check(list) || PyList_GET_SIZE(list) > MAX_NAMES) {
        PyErr_SetString(PyExc_ValueError, "contract lists must be lists of at most 256 texts");
        return -1;
    }
    *count = (int)PyList_GET_SIZE(list);
    for (int i = 0; i < *count; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if ((item == Py_None && !optional) || (item != Py_None && !PyUnicode_Check(item))) {
            PyErr_SetString(PyExc_ValueError, "contract lists hold texts");
            return -1;
        }
        if (text_of(item, &texts[i]) != 0) return -1;
    }
    return 0;
}

/* features.vectorised._scan_contract(): (extra paths, fields, canonical names, their implied
 * channels, channel-specific flags (bytes), kinds, their event names, channels, app device
 * types, rare property keys, needle index of "device", of "context"). */
static int contract_of(PyObject *tuple, Py_ssize_t paths, Py_ssize_t needles, Contract *contract) {
    PyObject *extra, *fields, *canonical, *implied, *kinds, *kind_names, *channels, *app_types;
    PyObject *rare;
    const char *specific;
    Py_ssize_t specific_length;
    if (!PyArg_ParseTuple(tuple, "OOOOy#OOOOOii", &extra, &fields, &canonical, &implied,
                          &specific, &specific_length, &kinds, &kind_names, &channels, &app_types,
                          &rare, &contract->mention_device, &contract->mention_context))
        return -1;
    if (!PyList_Check(extra) || paths + PyList_GET_SIZE(extra) > MAX_PATHS) {
        PyErr_SetString(PyExc_ValueError, "contract: too many paths");
        return -1;
    }
    if (texts_of(extra, contract->extra_paths, &contract->extra_count, 0) != 0) return -1;
    paths += contract->extra_count;
    if (!PyList_Check(fields) || PyList_GET_SIZE(fields) != FIELD_COUNT) {
        PyErr_SetString(PyExc_ValueError, "contract fields: one path index per row field");
        return -1;
    }
    for (int f = 0; f < FIELD_COUNT; f++) {
        long index = PyLong_AsLong(PyList_GET_ITEM(fields, f));
        if (index == -1 && PyErr_Occurred()) return -1;
        if (index < 0 || index >= paths) {
            PyErr_SetString(PyExc_ValueError, "contract fields: a path index out of range");
            return -1;
        }
        contract->field[f] = (int)index;
    }
    int implied_count, kind_name_count;
    if (texts_of(canonical, contract->canonical, &contract->canonical_count, 0) != 0 ||
        texts_of(implied, contract->implied, &implied_count, 1) != 0 ||
        texts_of(channels, contract->channels, &contract->channel_count, 0) != 0 ||
        texts_of(app_types, contract->app_device_types, &contract->app_device_type_count, 0) ||
        texts_of(rare, contract->rare, &contract->rare_count, 0) != 0)
        return -1;
    if (!PyList_Check(kinds) || PyList_GET_SIZE(kinds) > 8 || !PyList_Check(kind_names) ||
        PyList_GET_SIZE(kind_names) != PyList_GET_SIZE(kinds) ||
        texts_of(kinds, contract->kinds, &contract->kind_count, 0) != 0 ||
        texts_of(kind_names, contract->kind_names, &kind_name_count, 0) != 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "contract kinds: at most 8");
        return -1;
    }
    if (implied_count != contract->canonical_count ||
        specific_length != contract->canonical_count) {
        PyErr_SetString(PyExc_ValueError, "contract: one implied channel and flag per name");
        return -1;
    }
    for (int i = 0; i < contract->canonical_count; i++) contract->specific[i] = specific[i] != 0;
    for (int k = 0; k < contract->rare_count; k++)
        if (memchr(contract->rare[k].text, '"', (size_t)contract->rare[k].length) != NULL) {
            PyErr_SetString(PyExc_ValueError, "contract: a rare key with a quote");
            return -1;
        }
    if (contract->mention_device < 0 || contract->mention_device >= needles ||
        contract->mention_context < 0 || contract->mention_context >= needles) {
        PyErr_SetString(PyExc_ValueError, "contract: mention indices out of range");
        return -1;
    }
    return 0;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer offsets_view, data_view;
    PyObject *path_list, *needle_list, *contract_tuple = Py_None, *result = NULL;
    int wide;
    if (!PyArg_ParseTuple(args, "y*y*O!pO!|O", &offsets_view, &data_view, &PyList_Type,
                          &path_list, &wide, &PyList_Type, &needle_list, &contract_tuple))
        return NULL;
    Job job = {0};
    Contract contract;
    PyObject *row_result = NULL, *row_columns = NULL;
    PyObject *row_buffers[3 * ROW_STRINGS] = {NULL};
    PyObject *timestamps = NULL, *revenue = NULL, *revenue_valid = NULL, *other = NULL;
    Column row_outputs[ROW_STRINGS];
    Py_ssize_t revenue_nulls = 0;
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
    job.stride = job.paths;
    if (contract_tuple != Py_None) {
        if (!PyTuple_Check(contract_tuple)) {
            PyErr_SetString(PyExc_TypeError, "contract must be a tuple or None");
            goto done;
        }
        if (contract_of(contract_tuple, job.paths, job.needles, &contract) != 0) goto done;
        job.contract = &contract;
        for (int e = 0; e < contract.extra_count; e++) {
            texts[job.stride] = contract.extra_paths[e].text;
            text_lengths[job.stride++] = contract.extra_paths[e].length;
        }
    }
    if (build_tree(&tree, texts, text_lengths, (int)job.stride) != 0) {
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
    job.starts = PyMem_RawMalloc(lines * (size_t)(job.stride + 1) * sizeof(int32_t));
    job.lengths = PyMem_RawMalloc(lines * (size_t)(job.stride + 1) * sizeof(int32_t));
    job.found = PyMem_RawMalloc(lines * (size_t)(job.needles + 1));
    job.totals = PyMem_RawCalloc((size_t)job.paths + 1, sizeof(Py_ssize_t));
    if (job.contract != NULL) job.rows = PyMem_RawMalloc(lines * sizeof(Row));
    if (!job.starts || !job.lengths || !job.found || !job.totals ||
        (job.contract != NULL && !job.rows)) {
        PyErr_NoMemory();
        goto done;
    }

    Py_BEGIN_ALLOW_THREADS;
    scan_all(&job);
    Py_END_ALLOW_THREADS;

    Py_ssize_t rows = job.scanned;
    mentions = PyList_New(job.needles);
    if (mentions == NULL) goto done;
    for (Py_ssize_t p = 0; p < job.paths; p++)
        if (new_column(&buffers[3 * p], rows, job.totals[p], &outputs[p]) != 0) goto done;
    for (Py_ssize_t k = 0; k < job.needles; k++) {
        PyObject *flags = PyBytes_FromStringAndSize(NULL, rows);
        if (flags == NULL) goto done;
        PyList_SET_ITEM(mentions, k, flags);
        mention_bytes[k] = (unsigned char *)PyBytes_AS_STRING(flags);
    }

    Py_BEGIN_ALLOW_THREADS;
    copy_all(&job, outputs, mention_bytes);
    Py_END_ALLOW_THREADS;

    columns = column_list(buffers, outputs, job.paths);
    if (columns == NULL) goto done;
    if (job.contract != NULL) {
        Py_ssize_t count = job.claimed, row_bitmap = (count + 7) / 8;
        for (int k = 0; k < ROW_STRINGS; k++)
            if (new_column(&row_buffers[3 * k], count, job.row_totals[k], &row_outputs[k]) != 0)
                goto done;
        timestamps = PyBytes_FromStringAndSize(NULL, count * 8);
        revenue = PyBytes_FromStringAndSize(NULL, count * 8);
        revenue_valid = PyBytes_FromStringAndSize(NULL, row_bitmap);
        other = PyBytes_FromStringAndSize(NULL, count);
        if (!timestamps || !revenue || !revenue_valid || !other) goto done;
        unsigned char *valid_bits = (unsigned char *)PyBytes_AS_STRING(revenue_valid);
        memset(valid_bits, 0, (size_t)row_bitmap);
        Py_BEGIN_ALLOW_THREADS;
        copy_rows(&job, row_outputs, (int64_t *)PyBytes_AS_STRING(timestamps),
                  (double *)PyBytes_AS_STRING(revenue), valid_bits, &revenue_nulls,
                  (unsigned char *)PyBytes_AS_STRING(other));
        Py_END_ALLOW_THREADS;
        row_columns = column_list(row_buffers, row_outputs, ROW_STRINGS);
        if (row_columns == NULL) goto done;
        row_result = Py_BuildValue("(nOOOOnO)", count, row_columns, timestamps, revenue,
                                   revenue_valid, revenue_nulls, other);
        if (row_result == NULL) goto done;
    } else {
        row_result = Py_NewRef(Py_None);
    }
    result = Py_BuildValue("(OnOOO)", categories, job.scanned, columns, mentions, row_result);

done:
    for (Py_ssize_t i = 0; i < 3 * MAX_PATHS; i++) Py_XDECREF(buffers[i]);
    Py_XDECREF(columns);
    Py_XDECREF(mentions);
    Py_XDECREF(categories);
    PyMem_RawFree(job.starts);
    PyMem_RawFree(job.lengths);
    PyMem_RawFree(job.found);
    PyMem_RawFree(job.totals);
    PyMem_RawFree(job.rows);
    for (int i = 0; i < 3 * ROW_STRINGS; i++) Py_XDECREF(row_buffers[i]);
    Py_XDECREF(row_columns);
    Py_XDECREF(row_result);
    Py_XDECREF(timestamps);
    Py_XDECREF(revenue);
    Py_XDECREF(revenue_valid);
    Py_XDECREF(other);
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
