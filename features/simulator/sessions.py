"""Shopping sessions of one simulated day: browsing, orders, signups and message landings.

A session is a row of a fixed template of 32 slots (identify, alias, home page, two category
lists, six products each viewed and maybe added, cart, checkout, login, order); a boolean mask
says which slots happen. Timing, identity and content are filled in for all sessions of the
day at once with numpy, then each present slot becomes one Segment message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from features.simulator.config import SimulationConfig
from features.simulator.context import Counters, Day, People, Run
from features.simulator.wire import (
    CURRENCY,
    HOUR_MS,
    SHOP_URL,
    Batch,
    WireObjects,
    alias_messages,
    identify_messages,
    maybe_noisy,
    noisy_email,
    noisy_phone,
    track_messages,
    view_messages,
)
from features.simulator.world import ROLE_KIOSK, World, sample_pairs

KIND_BROWSE, KIND_ORDER, KIND_SIGNUP, KIND_LANDING = 0, 1, 2, 3
_LATEST_SIGNUP_MS = 22 * HOUR_MS

# Slot codes.
(
    IDENTIFY,
    ALIAS,
    IDENTIFY_EMAIL,
    HOME,
    CATEGORY_PAGE,
    LIST_VIEWED,
    PRODUCT_PAGE,
    PRODUCT_VIEWED,
    PRODUCT_ADDED,
    CART_PAGE,
    CART_VIEWED,
    CHECKOUT_PAGE,
    CHECKOUT_STARTED,
    IDENTIFY_CHECKOUT,
    ORDER,
) = range(15)
LISTS, PRODUCTS = 2, 6  # category lists and product views a session can hold
SLOT_CODES = np.array(
    [IDENTIFY, ALIAS, IDENTIFY_EMAIL, HOME]
    + [CATEGORY_PAGE, LIST_VIEWED] * LISTS
    + [PRODUCT_PAGE, PRODUCT_VIEWED, PRODUCT_ADDED] * PRODUCTS
    + [CART_PAGE, CART_VIEWED, CHECKOUT_PAGE, CHECKOUT_STARTED, IDENTIFY_CHECKOUT, ORDER]
)
SLOTS = len(SLOT_CODES)
_FIRST_LIST_SLOT = 4
_FIRST_PRODUCT_SLOT = _FIRST_LIST_SLOT + 2 * LISTS
_CART_SLOT = _FIRST_PRODUCT_SLOT + 3 * PRODUCTS
SLOT_INDEX = np.concatenate(  # which list / product a slot is about, -1 for neither
    [
        np.full(_FIRST_LIST_SLOT, -1),
        np.repeat(np.arange(LISTS), 2),
        np.repeat(np.arange(PRODUCTS), 3),
        np.full(SLOTS - _CART_SLOT, -1),
    ]
)
# Time before each slot: minimum + exponential with this mean, in ms.
_GAP_MIN_MS = {
    IDENTIFY: 200,
    ALIAS: 200,
    IDENTIFY_EMAIL: 200,
    PRODUCT_ADDED: 1_000,
    IDENTIFY_CHECKOUT: 5_000,
    ORDER: 10_000,
}
_GAP_MEAN_MS = {
    IDENTIFY: 500,
    ALIAS: 300,
    IDENTIFY_EMAIL: 300,
    PRODUCT_ADDED: 20_000,
    IDENTIFY_CHECKOUT: 15_000,
    ORDER: 60_000,
}
_FOLLOWERS = (LIST_VIEWED, PRODUCT_VIEWED, CART_VIEWED, CHECKOUT_STARTED)  # a track after a view
SLOT_GAP_MIN = np.array([_GAP_MIN_MS.get(c, 50 if c in _FOLLOWERS else 2_000) for c in SLOT_CODES])
SLOT_GAP_MEAN = np.array(
    [_GAP_MEAN_MS.get(c, 300 if c in _FOLLOWERS else 40_000) for c in SLOT_CODES]
)


@dataclass
class Landings:
    """Sessions that start from a clicked message (email / SMS link, push tap)."""

    person: np.ndarray  # (L,) int
    pair: np.ndarray  # (L,) int
    t_ms: np.ndarray  # (L,) int64, the click
    channel: np.ndarray  # (L,) object: "email", "sms", "push"
    campaign_id: np.ndarray  # (L,) object

    @staticmethod
    def empty() -> Landings:
        none = np.empty(0, dtype=object)
        return Landings(np.empty(0, int), np.empty(0, int), np.empty(0, np.int64), none, none)

    @staticmethod
    def concat(parts: list[Landings]) -> Landings:
        return Landings(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in Landings.__annotations__)
        )


@dataclass
class ShoppingDay:
    """One day's sessions on the wire, and what the browsing sessions showed of each person's
    intent (the observations a forward filter over the intent chain reads)."""

    batch: Batch
    browse_sessions: np.ndarray  # (N,) sessions started by browsing (not orders or landings)
    product_views: np.ndarray  # (N,) products viewed in them
    products_added: np.ndarray  # (N,) products added to the cart in them


def simulate_sessions(
    day: Day, people: People, ordered: np.ndarray, landings: Landings, run: Run
) -> ShoppingDay:
    """All shopping sessions of ``day``: browsing, ``ordered`` people's order sessions, signups
    and ``landings``; marks today's logins in ``people.pair_logged_in``."""
    world, config, rng = run.world, run.config, run.rng
    intent, pair_logged_in = people.intent, people.pair_logged_in
    day_start_ms = day.start_ms
    # --- who shops, when and where ----------------------------------------------------------
    n_browse = rng.poisson(np.asarray(config.session_rate)[intent] * world.browse_activity)
    signups = np.flatnonzero(world.account_created_day == day.index)
    person = np.concatenate(
        [np.repeat(np.arange(world.n), n_browse), np.flatnonzero(ordered), signups, landings.person]
    )
    kind = np.repeat(
        [KIND_BROWSE, KIND_ORDER, KIND_SIGNUP, KIND_LANDING],
        [n_browse.sum(), ordered.sum(), len(signups), len(landings.person)],
    )
    n = len(person)
    is_landing, is_order, is_signup = kind == KIND_LANDING, kind == KIND_ORDER, kind == KIND_SIGNUP
    pair = sample_pairs(person, world.session_cdf, world.pair_table, rng.random(n))
    pair[is_signup] = world.primary_pair[signups]
    pair[is_landing] = landings.pair
    device = world.pair_device[pair]
    is_kiosk = world.pair_role[pair] == ROLE_KIOSK
    state = intent[person]

    hour = sample_hours(world.preference, day.day_of_week, person, rng.random(n))
    start = day_start_ms + hour * HOUR_MS + rng.integers(0, HOUR_MS, size=n)
    start[is_landing] = landings.t_ms + rng.integers(2_000, 10_000, size=is_landing.sum())
    # Signups happen before 22:00 so that no order session, moved back to end by midnight
    # (below), can come before the signup.
    start[is_signup] = np.minimum(start[is_signup], day_start_ms + _LATEST_SIGNUP_MS)

    # --- identity: logged in already, logging in now, or anonymous --------------------------
    created = world.account_created_day[person]
    signup_start = np.full(world.n, np.iinfo(np.int64).max)
    signup_start[signups] = start[is_signup]
    may_log_in = (created < day.index) | ((created == day.index) & (start > signup_start[person]))
    login_here = may_log_in & (
        rng.random(n) < np.asarray(config.login_per_session)[world.pair_role[pair]]
    )
    login_here |= is_signup
    login_here &= ~is_landing
    logged_start = (pair_logged_in[pair] & ~is_kiosk) | (
        _earlier_in_group(pair, start, login_here) & ~is_kiosk
    )
    login_start = login_here & ~logged_start
    login_checkout = (
        is_order
        & may_log_in
        & ~logged_start
        & ~login_start
        & (rng.random(n) < config.login_at_checkout)
    )

    # --- what happens in the session -----------------------------------------------------------
    views_mean = np.where(is_landing, 1.0, np.asarray(config.product_views_mean)[state])
    n_products = np.minimum(1 + rng.poisson(views_mean), PRODUCTS)
    list_draws = rng.random((n, LISTS)) < config.category_list_share
    n_lists = np.where(is_landing, 0, np.cumprod(list_draws, axis=1).sum(axis=1))
    viewed = np.arange(PRODUCTS) < n_products[:, None]
    added = viewed & (rng.random((n, PRODUCTS)) < np.asarray(config.add_to_cart)[state][:, None])
    needs_add = is_order & ~added.any(axis=1)
    added[needs_add, n_products[needs_add] - 1] = True
    quantity = 1 + (rng.random((n, PRODUCTS)) < 0.2)
    cart = added.any(axis=1) & (is_order | (rng.random(n) < config.cart_view_given_added))
    checkout = cart & (is_order | (rng.random(n) < config.checkout_given_cart))
    alias = is_signup & (rng.random(n) < config.alias_at_signup)
    email_identify = np.zeros(n, dtype=bool)
    email_identify[is_landing] = (landings.channel == "email") & (
        rng.random(is_landing.sum()) < config.email_identify_on_click
    )
    email_identify &= ~logged_start
    home = is_landing | (rng.random(n) < config.home_page_share)
    list_category = _categories(person, (n, LISTS), world, rng, config)
    product = _products(person, world, rng, config)

    mask = np.zeros((n, SLOTS), dtype=bool)
    mask[:, 0], mask[:, 1], mask[:, 2], mask[:, 3] = login_start, alias, email_identify, home
    lists_present = np.arange(LISTS) < n_lists[:, None]
    mask[:, _FIRST_LIST_SLOT:_FIRST_PRODUCT_SLOT] = lists_present.repeat(2, axis=1)
    products_present = np.stack([viewed, viewed, added], axis=2).reshape(n, 3 * PRODUCTS)
    mask[:, _FIRST_PRODUCT_SLOT:_CART_SLOT] = products_present
    mask[:, _CART_SLOT : _CART_SLOT + 2] = cart[:, None]
    mask[:, _CART_SLOT + 2 : _CART_SLOT + 4] = checkout[:, None]
    mask[:, _CART_SLOT + 4] = login_checkout
    mask[:, _CART_SLOT + 5] = is_order

    # --- timing: gaps between slots; an order lands on the day its hazard was drawn for --------
    gaps = SLOT_GAP_MIN + (SLOT_GAP_MEAN * rng.exponential(size=(n, SLOTS))).astype(np.int64)
    offsets = np.cumsum(gaps * mask, axis=1)
    overflow = start + offsets[:, -1] - (day.end_ms - 1)
    start -= np.where(is_order & (overflow > 0), overflow, 0)  # other sessions may run past 0:00

    pair_logged_in[pair[(login_start | login_checkout) & ~is_kiosk]] = True
    sessions = _Sessions(
        person=person,
        device=device,
        kind=kind,
        start=start,
        offsets=offsets,
        mask=mask,
        product=product,
        quantity=quantity,
        list_category=list_category,
        logged_in=logged_start | login_start,
        login_checkout=login_checkout,
        first_number=run.counters.sessions,
    )
    run.counters.sessions += n
    browsing = kind == KIND_BROWSE
    return ShoppingDay(
        _serialise(sessions, landings, run),
        browse_sessions=n_browse,
        product_views=np.bincount(person[browsing], n_products[browsing], world.n),
        products_added=np.bincount(person[browsing], added[browsing].sum(axis=1), world.n),
    )


@dataclass
class _Sessions:
    """One day's sessions (S) and their slots: everything but the wire format."""

    person: np.ndarray  # (S,) int
    device: np.ndarray  # (S,) int
    kind: np.ndarray  # (S,) KIND_*
    start: np.ndarray  # (S,) int64 ms
    offsets: np.ndarray  # (S, SLOTS) ms from start to each slot
    mask: np.ndarray  # (S, SLOTS) bool: the slot happens
    product: np.ndarray  # (S, PRODUCTS) catalogue index of each product slot
    quantity: np.ndarray  # (S, PRODUCTS) quantity if added
    list_category: np.ndarray  # (S, LISTS) category index of each list slot
    logged_in: np.ndarray  # (S,) userId rides on the session from its start
    login_checkout: np.ndarray  # (S,) ... from the login at checkout
    first_number: int  # running number of the first session, for cart / checkout ids


def sample_hours(
    preference: np.ndarray, day_of_week: int, person: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Hour of the day (0-23) for each entry of ``person``, from their hour-of-week preference."""
    day = preference[person, day_of_week * 24 : (day_of_week + 1) * 24]
    cdf = np.cumsum(day, axis=1)
    return np.minimum((cdf <= u[:, None] * cdf[:, -1:]).sum(axis=1), 23)


def _earlier_in_group(group: np.ndarray, order_key: np.ndarray, flag: np.ndarray) -> np.ndarray:
    """For each row: does an earlier row (by order_key) of the same group have ``flag``?"""
    order = np.lexsort((order_key, group))
    g, f = group[order], flag[order].astype(np.int64)
    before = np.cumsum(f) - f
    starts = np.r_[True, g[1:] != g[:-1]]
    base = np.maximum.accumulate(np.where(starts, before, 0))
    out = np.empty(len(group), dtype=bool)
    out[order] = (before - base) > 0
    return out


def _categories(
    person: np.ndarray,
    shape: tuple[int, int],
    world: World,
    rng: np.random.Generator,
    config: SimulationConfig,
) -> np.ndarray:
    """Categories browsed: one of the person's two favourites, or any at random."""
    favourite = world.favourite_categories[person[:, None], rng.integers(2, size=shape)]
    anything = rng.integers(config.categories, size=shape)
    return np.where(rng.random(shape) < config.favourite_category_share, favourite, anything)


def _products(
    person: np.ndarray, world: World, rng: np.random.Generator, config: SimulationConfig
) -> np.ndarray:
    shape = (len(person), PRODUCTS)
    category = _categories(person, shape, world, rng, config)
    per = world.catalogue.products_per_category
    return category * per + rng.integers(per, size=shape)


def _serialise(sessions: _Sessions, landings: Landings, run: Run) -> Batch:
    """One message per present slot ("cell"), built a slot code at a time."""
    world, wire, config, rng, stamper = run.world, run.wire, run.config, run.rng, run.stamper
    person, device, kind, mask = sessions.person, sessions.device, sessions.kind, sessions.mask
    product, quantity = sessions.product, sessions.quantity
    session_base = sessions.first_number
    rows, cols = np.nonzero(mask)
    code = SLOT_CODES[cols]
    t_ms = sessions.start[rows] + sessions.offsets[rows, cols]
    cell_person, cell_device = person[rows], device[rows]
    logged = sessions.logged_in[rows] | ((cols >= _CART_SLOT + 4) & sessions.login_checkout[rows])
    user_ids = np.where(logged, world.user_ids[cell_person], None)
    anonymous_ids = world.device_anonymous_ids[cell_device]
    view_kind = np.where(world.device_types[cell_device] <= 1, "screen", "page").astype(object)
    is_app = world.device_types[device] <= 1

    context = wire.device_context[device]
    landing_rows = np.flatnonzero(kind == KIND_LANDING)
    landing_page = np.empty(len(person), dtype=object)
    for s, channel, campaign in zip(
        landing_rows.tolist(), landings.channel, landings.campaign_id, strict=True
    ):
        context[s] = {
            "device": wire.device[device[s]],
            "campaign": {"source": channel, "medium": channel, "name": campaign},
        }
        landing_page[s] = (
            {}
            if is_app[s]
            else {
                "url": f"{SHOP_URL}/?utm_source={channel}&utm_medium={channel}"
                f"&utm_campaign={campaign}",
                "path": "/",
            }
        )
    cell_context = context[rows]

    carts = _cart_contents(mask, product, quantity, world, wire)
    order_rows = np.flatnonzero(mask[:, _CART_SLOT + 5])
    order_ids = _order_ids(order_rows, run.counters)
    product_of_cell = np.where(
        SLOT_INDEX[cols] >= 0, product[rows, np.maximum(SLOT_INDEX[cols], 0)], -1
    )
    list_of_cell = np.where(
        SLOT_INDEX[cols] >= 0,
        sessions.list_category[rows, np.maximum(SLOT_INDEX[cols], 0) % LISTS],
        -1,
    )

    noise = config.identifier_format_noise_share
    emails = maybe_noisy(world.emails, rng, noise, noisy_email)
    phones = maybe_noisy(world.phones, rng, noise, noisy_phone)
    use_second = (world.second_emails != None) & (rng.random(world.n) < 0.5)  # noqa: E711
    account_emails = np.where(
        use_second, maybe_noisy(world.second_emails, rng, noise, noisy_email), emails
    )
    guest_second = (world.second_emails != None) & (  # noqa: E711
        rng.random(world.n) < config.second_email_at_checkout
    )
    order_emails = np.where(guest_second, world.second_emails, emails)

    batches = []
    for c in range(ORDER + 1):
        idx = np.flatnonzero(code == c)
        if len(idx) == 0:
            continue
        t = t_ms[idx]
        mids, ts = stamper.stamp(t)
        p = cell_person[idx]
        s_rows = rows[idx]
        anon, uid, ctx = anonymous_ids[idx].tolist(), user_ids[idx].tolist(), cell_context[idx]
        if c in (IDENTIFY, IDENTIFY_CHECKOUT):
            traits = _account_traits(p, account_emails, phones, world)
            if c == IDENTIFY:
                signup = (kind[s_rows] == KIND_SIGNUP).tolist()
                for tr, is_signup, when in zip(traits, signup, ts, strict=True):
                    if is_signup:
                        tr["created_at"] = when
            messages = identify_messages(mids, ts, anon, uid, traits, ctx.tolist())
        elif c == IDENTIFY_EMAIL:
            traits = [{"email": e} for e in emails[p].tolist()]
            messages = identify_messages(mids, ts, anon, uid, traits, ctx.tolist())
        elif c == ALIAS:
            messages = alias_messages(mids, ts, anon, world.user_ids[p].tolist(), ctx.tolist())
        elif c in _VIEW_NAME:
            props = _view_properties(
                c, s_rows, idx, view_kind, landing_page, kind, product_of_cell, list_of_cell, wire
            )
            messages = view_messages(
                view_kind[idx].tolist(), _VIEW_NAME[c], mids, ts, anon, uid, props, ctx.tolist()
            )
        else:
            event, props = _track_properties(
                c,
                s_rows,
                idx,
                product_of_cell,
                list_of_cell,
                quantity,
                cols,
                carts,
                order_ids,
                session_base,
                wire,
            )
            if c == ORDER:
                ctx = [
                    {"device": d, "traits": {"email": e}}
                    for d, e in zip(
                        wire.device[cell_device[idx]].tolist(),
                        order_emails[p].tolist(),
                        strict=True,
                    )
                ]
            else:
                ctx = ctx.tolist()
            messages = track_messages(event, mids, ts, anon, uid, props, ctx)
        batches.append(Batch.serialise(t, messages))
    return Batch.concat(batches) if batches else Batch.empty()


def _order_ids(order_rows: np.ndarray, counters: Counters) -> dict[int, str]:
    """Session row -> order_id for today's orders."""
    first = counters.orders
    counters.orders += len(order_rows)
    return {s: f"ORD-{first + i:08d}" for i, s in enumerate(order_rows.tolist())}


_VIEW_NAME = {
    HOME: "Home",
    CATEGORY_PAGE: "Category",
    PRODUCT_PAGE: "Product",
    CART_PAGE: "Cart",
    CHECKOUT_PAGE: "Checkout",
}
_TRACK_EVENTS = {
    LIST_VIEWED: "Product List Viewed",
    PRODUCT_VIEWED: "Product Viewed",
    PRODUCT_ADDED: "Product Added",
    CART_VIEWED: "Cart Viewed",
    CHECKOUT_STARTED: "Checkout Started",
    ORDER: "Order Completed",
}


def _account_traits(
    person: np.ndarray, emails: np.ndarray, phones: np.ndarray, world: World
) -> list[dict[str, Any]]:
    out = []
    for e, first, last, phone in zip(
        emails[person].tolist(),
        world.first_names[person].tolist(),
        world.last_names[person].tolist(),
        phones[person].tolist(),
        strict=True,
    ):
        traits = {"email": e, "first_name": first.title(), "last_name": last.title()}
        if phone is not None:
            traits["phone"] = phone
        out.append(traits)
    return out


def _view_properties(
    code: int,
    session_rows: np.ndarray,
    idx: np.ndarray,
    view_kind: np.ndarray,
    landing_page: np.ndarray,
    kind: np.ndarray,
    product_of_cell: np.ndarray,
    list_of_cell: np.ndarray,
    wire: WireObjects,
) -> list[dict[str, Any]]:
    screen = view_kind[idx] == "screen"
    if code == CATEGORY_PAGE:
        cat = list_of_cell[idx]
        return np.where(screen, wire.category_screen[cat], wire.category_page[cat]).tolist()
    if code == PRODUCT_PAGE:
        k = product_of_cell[idx]
        return np.where(screen, wire.product_screen[k], wire.product_page[k]).tolist()
    web = wire.page[_VIEW_NAME[code]]
    props = [{} if s else web for s in screen.tolist()]
    if code == HOME:
        for i in np.flatnonzero(kind[session_rows] == KIND_LANDING).tolist():
            props[i] = landing_page[session_rows[i]]
    return props


def _track_properties(
    code: int,
    session_rows: np.ndarray,
    idx: np.ndarray,
    product_of_cell: np.ndarray,
    list_of_cell: np.ndarray,
    quantity: np.ndarray,
    cols: np.ndarray,
    carts: dict[int, tuple[list[dict[str, Any]], float]],
    order_ids: dict[int, str],
    session_base: int,
    wire: WireObjects,
) -> tuple[str, list[dict[str, Any]]]:
    event = _TRACK_EVENTS[code]
    if code == LIST_VIEWED:
        return event, wire.list_viewed[list_of_cell[idx]].tolist()
    if code == PRODUCT_VIEWED:
        return event, wire.product_viewed[product_of_cell[idx]].tolist()
    if code == PRODUCT_ADDED:
        slot = SLOT_INDEX[cols[idx]]
        q = quantity[session_rows, slot].tolist()
        return event, [
            {**wire.product[k], "quantity": qty, "cart_id": f"cart-{session_base + s:09d}"}
            for k, qty, s in zip(
                product_of_cell[idx].tolist(), q, session_rows.tolist(), strict=True
            )
        ]
    props = []
    for s in session_rows.tolist():
        products, value = carts[s]
        if code == CART_VIEWED:
            props.append({"cart_id": f"cart-{session_base + s:09d}", "products": products})
        elif code == CHECKOUT_STARTED:
            p = {
                "checkout_id": f"chk-{session_base + s:09d}",
                "value": value,
                "currency": CURRENCY,
                "products": products,
            }
            if s in order_ids:
                p["order_id"] = order_ids[s]
            props.append(p)
        else:
            props.append(
                {
                    "order_id": order_ids[s],
                    "revenue": value,
                    "currency": CURRENCY,
                    "products": products,
                }
            )
    return event, props


def _cart_contents(
    mask: np.ndarray,
    product: np.ndarray,
    quantity: np.ndarray,
    world: World,
    wire: WireObjects,
) -> dict[int, tuple[list[dict[str, Any]], float]]:
    """Products (with quantity) and value of every session that views its cart."""
    added = mask[:, _FIRST_PRODUCT_SLOT + 2 : _CART_SLOT : 3]  # (S, PRODUCTS)
    price = world.catalogue.price
    out = {}
    for s in np.flatnonzero(mask[:, _CART_SLOT]).tolist():
        slots = np.flatnonzero(added[s])
        items = [
            {**wire.product[k], "quantity": q}
            for k, q in zip(product[s, slots].tolist(), quantity[s, slots].tolist(), strict=True)
        ]
        value = round(float((price[product[s, slots]] * quantity[s, slots]).sum()), 2)
        out[s] = (items, value)
    return out
