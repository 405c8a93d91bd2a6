"""The static world: people, their identifiers and devices, preferences and the catalogue.

Built once, vectorised over people, from the simulation's random generator. Arrays are indexed
by person (N), device (D) or person-device pair (P); strings that events copy are numpy object
arrays so that fancy indexing hands the serialiser ready Python strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.simulator.config import DEVICE_TYPES, HOURS_PER_WEEK, SimulationConfig
from features.simulator.model import quantise

ROLE_OWN, ROLE_HOUSEHOLD, ROLE_KIOSK = 0, 1, 2
# Relative chance that a session happens on a device of each kind (the primary own device 3x).
_SESSION_WEIGHT_PRIMARY, _SESSION_WEIGHT_OWN = 3.0, 1.0
_SESSION_WEIGHT_HOUSEHOLD, _SESSION_WEIGHT_KIOSK = 1.0, 0.1
# Household devices: P(ios), P(android), P(desktop), P(mobile_web) (a family tablet or PC).
_HOUSEHOLD_DEVICE_MIX = (0.15, 0.15, 0.5, 0.2)

FIRST_NAMES = [
    "olivia",
    "amelia",
    "isla",
    "ava",
    "ivy",
    "freya",
    "lily",
    "florence",
    "mia",
    "willow",
    "rosie",
    "sophia",
    "isabella",
    "grace",
    "daisy",
    "sienna",
    "poppy",
    "elsie",
    "emily",
    "ella",
    "noah",
    "oliver",
    "george",
    "arthur",
    "muhammad",
    "leo",
    "harry",
    "oscar",
    "archie",
    "henry",
    "theodore",
    "freddie",
    "jack",
    "charlie",
    "theo",
    "alfie",
    "jacob",
    "thomas",
    "finley",
    "arlo",
]
LAST_NAMES = [
    "smith",
    "jones",
    "taylor",
    "brown",
    "williams",
    "wilson",
    "johnson",
    "davies",
    "patel",
    "robinson",
    "wright",
    "thompson",
    "evans",
    "walker",
    "white",
    "roberts",
    "green",
    "hall",
    "thomas",
    "clarke",
    "jackson",
    "wood",
    "harris",
    "edwards",
    "turner",
    "martin",
    "cooper",
    "hill",
    "ward",
    "hughes",
    "moore",
    "clark",
    "king",
    "harrison",
    "lewis",
    "baker",
    "lee",
    "allen",
    "morris",
    "khan",
]
EMAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.test", "inbox.test")
WORK_EMAIL_DOMAINS = ("work.example", "corp.test", "office.example")
CATEGORY_NAMES = (
    "Women",
    "Men",
    "Kids",
    "Home",
    "Beauty",
    "Electronics",
    "Sports",
    "Garden",
    "Books",
    "Toys",
    "Pets",
    "Food",
    "Travel",
    "Music",
    "Games",
    "Office",
)
# Daily activity bumps of the population: (centre hour, spread of centres, weight).
_ACTIVITY_PEAKS = ((7.5, 1.0, 0.2), (12.5, 1.0, 0.2), (19.5, 1.5, 0.4), (22.5, 1.0, 0.2))


@dataclass
class Catalogue:
    product_ids: np.ndarray  # (K,) object: "sku-00042"
    category: np.ndarray  # (K,) int: index into category_names
    price: np.ndarray  # (K,) float, GBP, 2 decimals
    category_names: tuple[str, ...]
    products_per_category: int


@dataclass
class World:
    """Everything about the people that does not change during the simulation."""

    n: int
    person_ids: np.ndarray  # (N,) object
    user_ids: np.ndarray  # (N,) object, None without an account
    account_created_day: np.ndarray  # (N,) int: -1 before day 0, NO_ACCOUNT without one
    first_names: np.ndarray  # (N,) object
    last_names: np.ndarray  # (N,) object
    emails: np.ndarray  # (N,) object, canonical (lower case)
    second_emails: np.ndarray  # (N,) object, None for most
    phones: np.ndarray  # (N,) object, E.164, None without a phone
    email_subscribed: np.ndarray  # (N,) bool, on the list at day 0
    email_valid: np.ndarray  # (N,) bool, False: the address hard-bounces
    preference: np.ndarray  # (N, 168) float32, sums to 1 per person
    affinity: np.ndarray  # (N, 3) logit intercepts for email, sms, push
    engagement_baseline: np.ndarray  # (N,) resting engagement level in [0, 1]
    click_given_open: np.ndarray  # (N,) P(email click | open)
    intent_propensity: np.ndarray  # (N,) multiplier on moves up the intent chain
    purchase_propensity: np.ndarray  # (N,) multiplier on the purchase hazard
    browse_activity: np.ndarray  # (N,) multiplier on the session rate
    favourite_categories: np.ndarray  # (N, 2) int
    household_id: np.ndarray  # (N,) int, -1 outside a household
    # Devices (D): own devices, household devices, kiosks.
    device_anonymous_ids: np.ndarray  # (D,) object
    device_ids: np.ndarray  # (D,) object
    device_types: np.ndarray  # (D,) int8 index into DEVICE_TYPES
    device_shared: np.ndarray  # (D,) bool
    # Person-device pairs (P), sorted by person; a person's first pair is the primary device.
    pair_person: np.ndarray  # (P,) int
    pair_device: np.ndarray  # (P,) int
    pair_role: np.ndarray  # (P,) int: ROLE_OWN, ROLE_HOUSEHOLD, ROLE_KIOSK
    pair_table: np.ndarray  # (N, K) pair index, -1 padding
    pair_count: np.ndarray  # (N,) pairs per person
    session_cdf: np.ndarray  # (N, K) cumulative P(session on pair k)
    own_cdf: np.ndarray  # (N, K) same, over own devices only (where message clicks land)
    primary_pair: np.ndarray  # (N,) pair index of the primary own device
    push_pair: np.ndarray  # (N,) pair index of the push-enabled app device, -1 if none
    catalogue: Catalogue

    @property
    def has_account(self) -> np.ndarray:
        return self.account_created_day < NO_ACCOUNT

    @property
    def has_phone(self) -> np.ndarray:
        return self.phones != None  # noqa: E711 - elementwise on an object array


NO_ACCOUNT = np.iinfo(np.int32).max


def build_world(n: int, days: int, rng: np.random.Generator, config: SimulationConfig) -> World:
    """Draw the static world for ``n`` people."""
    person_ids = np.array([f"p{i:07d}" for i in range(n)], dtype=object)
    first = np.array(FIRST_NAMES, dtype=object)[rng.integers(len(FIRST_NAMES), size=n)]
    last = np.array(LAST_NAMES, dtype=object)[rng.integers(len(LAST_NAMES), size=n)]

    has_account = rng.random(n) < config.account_share
    pre_existing = rng.random(n) < config.account_pre_existing_share
    created = np.where(pre_existing, -1, rng.integers(0, days, size=n))
    account_created_day = np.where(has_account, created, NO_ACCOUNT)
    user_ids = _hex_ids(n, rng, "user_", digits=12)
    user_ids[~has_account] = None

    emails, second_emails = _emails(first, last, rng, config)
    phones = _phones(n, rng, config)
    email_subscribed = rng.random(n) < np.where(
        has_account, config.email_subscribed_share_account, config.email_subscribed_share_guest
    )
    email_valid = rng.random(n) >= config.email_invalid_share

    base = np.array([config.email_open_logit, config.sms_click_logit, config.push_tap_logit])
    affinity = base + rng.normal(0.0, config.affinity_sd, size=(n, 3))

    devices = _devices(n, rng, config)
    catalogue = _catalogue(rng, config)
    return World(
        n=n,
        person_ids=person_ids,
        user_ids=user_ids,
        account_created_day=account_created_day,
        first_names=first,
        last_names=last,
        emails=emails,
        second_emails=second_emails,
        phones=phones,
        email_subscribed=email_subscribed,
        email_valid=email_valid,
        preference=hour_of_week_preferences(n, rng),
        affinity=affinity,
        engagement_baseline=quantise(rng.beta(*config.engagement_baseline_beta, size=n)),
        click_given_open=rng.beta(*config.click_given_open_beta, size=n),
        intent_propensity=_mean_one_lognormal(rng, config.intent_propensity_sd, n),
        purchase_propensity=_mean_one_lognormal(rng, config.purchase_propensity_sd, n),
        browse_activity=_mean_one_lognormal(rng, config.browse_activity_sd, n),
        favourite_categories=_two_distinct(n, config.categories, rng),
        catalogue=catalogue,
        **devices,
    )


def hour_of_week_preferences(n: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 168) hour-of-week weights, Monday 00:00 UTC first, each row summing to 1.

    A day is 1-3 circular Gaussian bumps around population activity peaks (commute, lunch,
    evening, late night) over a small floor; weekends shift the bumps about an hour later; each
    day of the week then gets its own weight, weekends a person-specific one.
    """
    bumps = 3
    peaks = np.array(_ACTIVITY_PEAKS)
    component = rng.choice(len(peaks), p=peaks[:, 2], size=(n, bumps))
    centre = peaks[component, 0] + rng.normal(0.0, 1.0, size=(n, bumps)) * peaks[component, 1]
    width = rng.uniform(1.0, 2.5, size=(n, bumps))  # hours
    weight = rng.dirichlet(np.ones(bumps), size=n)
    weight *= np.arange(bumps) < rng.integers(1, bumps + 1, size=(n, 1))  # 1-3 bumps kept
    weekend_shift = rng.normal(1.0, 0.7, size=(n, 1))
    floor = rng.uniform(0.01, 0.05, size=(n, 1))

    def day_profile(centres: np.ndarray) -> np.ndarray:  # (N, 24), peak of a bump = its weight
        hours = np.arange(24)[None, None, :]
        distance = np.abs(hours - centres[:, :, None]) % 24
        distance = np.minimum(distance, 24 - distance)
        bump = np.exp(-0.5 * (distance / width[:, :, None]) ** 2)
        profile = (weight[:, :, None] * bump).sum(axis=1) + floor
        return profile / profile.sum(axis=1, keepdims=True)

    weekday, weekend = day_profile(centre), day_profile(centre + weekend_shift)
    day_weight = rng.lognormal(0.0, 0.25, size=(n, 7))
    day_weight[:, 5:] *= rng.lognormal(0.0, 0.4, size=(n, 1))
    week = np.concatenate(
        [(weekend if dow >= 5 else weekday) * day_weight[:, dow : dow + 1] for dow in range(7)],
        axis=1,
    )
    week = (week / week.sum(axis=1, keepdims=True)).astype(np.float32)
    week /= week.sum(axis=1, keepdims=True, dtype=np.float32)
    assert week.shape[1] == HOURS_PER_WEEK
    return week  # float32: exactly what truth.parquet stores


def _mean_one_lognormal(rng: np.random.Generator, sigma: float, n: int) -> np.ndarray:
    return rng.lognormal(-0.5 * sigma**2, sigma, size=n)


def _two_distinct(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    first = rng.integers(k, size=n)
    second = (first + 1 + rng.integers(k - 1, size=n)) % k
    return np.stack([first, second], axis=1)


def bijective_mix(values: np.ndarray, salt: int, bits: int) -> np.ndarray:
    """A bijection on [0, 2**bits): distinct inputs give distinct, random-looking outputs."""
    mask = np.uint64((1 << bits) - 1)
    half = np.uint64(bits // 2)
    z = (values.astype(np.uint64) + np.uint64(salt)) & mask
    z ^= z >> half
    z = (z * np.uint64(0xBF58476D1CE4E5B9)) & mask
    z ^= z >> np.uint64(bits // 2 - 3)
    z = (z * np.uint64(0x94D049BB133111EB)) & mask
    z ^= z >> half
    return z


def _hex_ids(n: int, rng: np.random.Generator, prefix: str, digits: int) -> np.ndarray:
    """``n`` distinct ids: ``prefix`` + ``digits`` hex digits."""
    salt = int(rng.integers(0, 2**62))
    values = bijective_mix(np.arange(n), salt, bits=4 * digits).tolist()
    return np.array([f"{prefix}{v:0{digits}x}" for v in values], dtype=object)


def _uuids(n: int, rng: np.random.Generator, upper: bool = False) -> np.ndarray:
    """``n`` distinct UUID-4 shaped ids (distinct because their last 64 bits are a bijection)."""
    unique = bijective_mix(np.arange(n), int(rng.integers(0, 2**62)), bits=64).tolist()
    random = rng.integers(0, 2**63, size=n).tolist()
    out = []
    for r, u in zip(random, unique, strict=True):
        h = f"{r:016x}{u:016x}"
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}")
    ids = np.array(out, dtype=object)
    return np.array([i.upper() for i in out], dtype=object) if upper else ids


def _coprime_multiplier(rng: np.random.Generator, modulus: int, primes: tuple[int, ...]) -> int:
    while True:
        a = int(rng.integers(modulus // 3, modulus))
        if all(a % p for p in primes):
            return a


def _emails(
    first: np.ndarray, last: np.ndarray, rng: np.random.Generator, config: SimulationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct primary addresses (``first.last<code>@``), a few second ones (``flast_<code>@``)."""
    n = len(first)
    modulus = 10 ** max(6, len(str(n)))
    a, b = _coprime_multiplier(rng, modulus, (2, 5)), int(rng.integers(modulus))
    codes = ((np.arange(n, dtype=np.int64) * a + b) % modulus).tolist()
    domains = np.array(EMAIL_DOMAINS, dtype=object)[rng.integers(len(EMAIL_DOMAINS), size=n)]
    work = np.array(WORK_EMAIL_DOMAINS, dtype=object)[rng.integers(len(WORK_EMAIL_DOMAINS), size=n)]
    has_second = rng.random(n) < config.second_email_share
    emails = np.array(
        [f"{f}.{s}{c}@{d}" for f, s, c, d in zip(first, last, codes, domains, strict=True)],
        dtype=object,
    )
    second = np.full(n, None, dtype=object)
    for i in np.flatnonzero(has_second).tolist():
        second[i] = f"{first[i][0]}{last[i]}_{codes[i]}@{work[i]}"
    return emails, second


# UK mobile numbers +44 7d........ with a leading digit that libphonenumber always accepts.
_MOBILE_PREFIX_DIGITS = (1, 2, 3, 4, 5, 8)


def _phones(n: int, rng: np.random.Generator, config: SimulationConfig) -> np.ndarray:
    """Distinct E.164 UK mobile numbers for the phone share of people, None for the rest."""
    block = 10**8
    modulus = len(_MOBILE_PREFIX_DIGITS) * block
    if n > modulus:
        raise ValueError(f"at most {modulus:,} customers have distinct phone numbers")
    a, b = _coprime_multiplier(rng, modulus, (2, 3, 5)), int(rng.integers(modulus))
    values = ((np.arange(n, dtype=np.int64) * a + b) % modulus).tolist()
    has_phone = (rng.random(n) < config.phone_share).tolist()
    phones = np.full(n, None, dtype=object)
    for i, (v, has) in enumerate(zip(values, has_phone, strict=True)):
        if has:
            phones[i] = f"+447{_MOBILE_PREFIX_DIGITS[v // block]}{v % block:08d}"
    return phones


def _devices(n: int, rng: np.random.Generator, config: SimulationConfig) -> dict[str, np.ndarray]:
    """Own devices (1-4 a person), household devices and kiosks, and who uses which."""
    own_count = rng.choice(4, p=config.devices_per_person, size=n) + 1
    own_person = np.repeat(np.arange(n), own_count)
    own_type = rng.choice(4, p=config.device_type_mix, size=len(own_person))

    # Households: a random share of people in groups of 2-4 around one shared device.
    members = rng.permutation(n)[: round(config.household_share * n)]
    sizes: list[int] = []
    while sum(sizes) < len(members):
        sizes.append(int(rng.integers(2, 5)))
    if sizes:
        sizes[-1] -= sum(sizes) - len(members)  # trim the last household to fit ...
        if sizes[-1] < 2:
            sizes.pop()  # ... or drop it when fewer than two people are left
    members = members[: sum(sizes)]
    household_of_member = np.repeat(np.arange(len(sizes)), sizes)
    household_id = np.full(n, -1)
    household_id[members] = household_of_member
    household_type = rng.choice(4, p=_HOUSEHOLD_DEVICE_MIX, size=len(sizes))

    # Kiosks: shop-floor desktops used by 20+ people each.
    kiosk_low, kiosk_high = config.kiosk_users
    kiosks = max(1, round(n / config.customers_per_kiosk)) if n >= kiosk_low else 0
    kiosk_users = [
        rng.choice(n, size=min(n, int(rng.integers(kiosk_low, kiosk_high + 1))), replace=False)
        for _ in range(kiosks)
    ]

    n_own, n_household = len(own_person), len(sizes)
    device_types = np.concatenate(
        [own_type, household_type, np.full(kiosks, DEVICE_TYPES.index("desktop"))]
    ).astype(np.int8)
    n_devices = len(device_types)
    device_shared = np.arange(n_devices) >= n_own
    anonymous_ids = _uuids(n_devices, rng)
    app_ids = _uuids(n_devices, rng, upper=True)  # IDFV / Android-style hardware ids
    web_ids = _hex_ids(n_devices, rng, "web-", digits=16)
    is_app = device_types <= 1
    device_ids = np.where(is_app, app_ids, web_ids)

    pair_person = np.concatenate([own_person, members, *(users for users in kiosk_users)]).astype(
        np.int64
    )
    pair_device = np.concatenate(
        [
            np.arange(n_own),
            n_own + household_of_member,
            *(np.full(len(users), n_own + n_household + k) for k, users in enumerate(kiosk_users)),
        ]
    ).astype(np.int64)
    pair_role = np.concatenate(
        [
            np.full(n_own, ROLE_OWN),
            np.full(len(members), ROLE_HOUSEHOLD),
            np.full(len(pair_person) - n_own - len(members), ROLE_KIOSK),
        ]
    )
    order = np.lexsort((pair_device, pair_person))  # own devices first: they were numbered first
    pair_person, pair_device, pair_role = pair_person[order], pair_device[order], pair_role[order]

    pair_count = np.bincount(pair_person, minlength=n)
    first_pair = np.concatenate([[0], np.cumsum(pair_count)[:-1]])
    slot = np.arange(len(pair_person)) - first_pair[pair_person]
    width = int(pair_count.max())
    pair_table = np.full((n, width), -1)
    pair_table[pair_person, slot] = np.arange(len(pair_person))

    is_primary = slot == 0
    weight = np.select(
        [is_primary, pair_role == ROLE_OWN, pair_role == ROLE_HOUSEHOLD],
        [_SESSION_WEIGHT_PRIMARY, _SESSION_WEIGHT_OWN, _SESSION_WEIGHT_HOUSEHOLD],
        _SESSION_WEIGHT_KIOSK,
    )
    session_cdf = _padded_cdf(pair_table, weight)
    own_cdf = _padded_cdf(pair_table, np.where(pair_role == ROLE_OWN, weight, 0.0))

    # Push: the first own app device of people who opted in.
    app_pair = np.flatnonzero((pair_role == ROLE_OWN) & is_app[pair_device])
    first_app = np.full(n, -1)
    first_app[pair_person[app_pair[::-1]]] = app_pair[::-1]  # the lowest index wins
    opted_in = rng.random(n) < config.push_opt_in_share
    push_pair = np.where(opted_in, first_app, -1)

    return {
        "household_id": household_id,
        "device_anonymous_ids": anonymous_ids,
        "device_ids": device_ids,
        "device_types": device_types,
        "device_shared": device_shared,
        "pair_person": pair_person,
        "pair_device": pair_device,
        "pair_role": pair_role,
        "pair_table": pair_table,
        "pair_count": pair_count,
        "session_cdf": session_cdf,
        "own_cdf": own_cdf,
        "primary_pair": first_pair,
        "push_pair": push_pair,
    }


def _padded_cdf(pair_table: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Row-wise cumulative distribution over a person's pairs; padding never gets picked."""
    w = np.where(pair_table >= 0, weight[np.maximum(pair_table, 0)], 0.0)
    cumulative = np.cumsum(w, axis=1)
    total = cumulative[:, -1:]
    # Exactly 1.0 from the last weighted pair on, so rounding never picks a zero-weight pair.
    cdf = np.where(cumulative >= total * (1 - 1e-12), 1.0, cumulative / total)
    return np.where(pair_table >= 0, cdf, 2.0)


def sample_pairs(
    persons: np.ndarray, cdf: np.ndarray, pair_table: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Pick one pair per entry of ``persons`` by inverse CDF; ``u`` uniform in [0, 1)."""
    column = (cdf[persons] <= u[:, None]).sum(axis=1)
    count = (pair_table[persons] >= 0).sum(axis=1)
    return pair_table[persons, np.minimum(column, count - 1)]


def _catalogue(rng: np.random.Generator, config: SimulationConfig) -> Catalogue:
    if not 2 <= config.categories <= len(CATEGORY_NAMES):
        raise ValueError(f"simulation config categories must be in 2..{len(CATEGORY_NAMES)}")
    k = config.categories * config.products_per_category
    price = np.round(rng.lognormal(np.log(config.price_median), config.price_sd, size=k), 2)
    return Catalogue(
        product_ids=np.array([f"sku-{i:05d}" for i in range(k)], dtype=object),
        category=np.repeat(np.arange(config.categories), config.products_per_category),
        price=np.maximum(price, 1.0),
        category_names=CATEGORY_NAMES[: config.categories],
        products_per_category=config.products_per_category,
    )
