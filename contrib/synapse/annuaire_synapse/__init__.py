"""Synapse module that keeps annuaire in step with a homeserver (annuaire issue 11).

- `get_displayname_for_registration`: a new account's display name is annuaire's verified name
  for the email address confirmed during registration (`GET display_name`); any failure leaves
  Synapse's default and never fails the registration.
- `on_add_user_third_party_identifier` / `on_remove_user_third_party_identifier`: `POST bind` /
  `POST unbind` for email addresses.
- `on_profile_update`: `POST profile`; `on_user_deactivation_status_changed`: `POST deactivated`
  with `erased` read from Synapse's `erased_users` table.

Those four go through a durable queue in Synapse's database (`outbox`), delivered in order in
the background by the process that runs Synapse's background tasks, retried with capped
exponential backoff; they never block or fail the user's action.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

from . import outbox
from .client import AnnuaireClient, Answer
from .config import AnnuaireConfig, AnnuaireConfigError, parse

__all__ = ["AnnuaireConfig", "AnnuaireModule"]

logger = logging.getLogger(__name__)

# How often the delivering process looks at the queue: jobs queued by workers, and a safety net.
POLL_INTERVAL_MS = 5_000
# Retry delays: 1 s, 2 s, 4 s … up to one minute; a 429's retry_after_ms is honoured up to 10 min.
BACKOFF_BASE_MS = 1_000
BACKOFF_CAP_MS = 60_000
RETRY_AFTER_CAP_MS = 600_000
# Jobs read from the database per batch.
BATCH_SIZE = 50
# Synapse refuses longer display names when users set them.
MAX_DISPLAYNAME_LENGTH = 256

EMAIL_IDENTITY = "m.login.email.identity"


class Verdict(Enum):
    """What to do with a job after one attempt."""

    DELIVERED = "delivered"
    DROP = "drop"
    RETRY = "retry"


def judge(answer: Answer) -> Verdict:
    """The contract's rules: 2xx done; 429 and 5xx retried; other 4xx from annuaire dropped.

    Some 4xx are retried rather than dropped, because they say the module is misconfigured, not
    that the call is wrong, and dropping would lose every change until an operator noticed:
    401 (token missing, unknown or revoked), M_UNRECOGNIZED (no such endpoint: a wrong URL or an
    annuaire without this API) and any 4xx without a Matrix errcode (the URL leads to something
    that is not annuaire's homeserver API, e.g. a proxy's error page).
    """
    if 200 <= answer.status < 300:
        return Verdict.DELIVERED
    if answer.status == 429 or answer.status >= 500:
        return Verdict.RETRY
    if answer.status == 401 or _misdirected(answer):
        return Verdict.RETRY
    if 400 <= answer.status < 500:
        return Verdict.DROP
    return Verdict.RETRY


def _misdirected(answer: Answer) -> bool:
    """True when the answer is not annuaire's homeserver API judging a call."""
    return answer.errcode is None or answer.errcode == "M_UNRECOGNIZED"


def retry_delay_ms(attempts: int, retry_after_ms: int | None = None) -> int:
    """The wait before the next attempt, after `attempts` failed ones (1 or more)."""
    if retry_after_ms is not None:
        return min(max(retry_after_ms, BACKOFF_BASE_MS), RETRY_AFTER_CAP_MS)
    exponent = min(max(attempts, 1) - 1, 16)
    return min(BACKOFF_BASE_MS * (2**exponent), BACKOFF_CAP_MS)


def _describe(answer: Answer) -> str:
    """Status and errcode of an answer, for a log line (never the body: it may hold an address)."""
    return f"HTTP {answer.status} {answer.errcode or '(no errcode)'}"


class AnnuaireModule:
    """The module: `modules: [{module: annuaire_synapse.AnnuaireModule, config: {…}}]`."""

    def __init__(self, config: AnnuaireConfig, api: Any, reactor: Any = None) -> None:
        if reactor is None:
            # Synapse runs on the global reactor.
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._config = config
        self._api = api
        self._client = AnnuaireClient(config, reactor)
        self._table_ready = False
        self._delivering = False
        self._again = False
        self._wakeup: Any = None
        # Only the process that runs background tasks (the main process unless
        # `run_background_tasks_on` says otherwise) delivers; every process queues.
        self._delivers = bool(api.should_run_background_tasks())

        from synapse.config import ConfigError

        try:
            api.register_password_auth_provider_callbacks(
                get_displayname_for_registration=self.get_displayname_for_registration,
            )
        except ConfigError as err:
            # Synapse refuses password-auth callbacks when authentication is delegated (MAS):
            # registration does not happen in Synapse then, the other callbacks still matter.
            logger.warning(
                "annuaire_synapse: no display names at registration (%s); the rest works", err
            )
        api.register_third_party_rules_callbacks(
            on_profile_update=self.on_profile_update,
            on_user_deactivation_status_changed=self.on_user_deactivation_status_changed,
            on_add_user_third_party_identifier=self.on_add_user_third_party_identifier,
            on_remove_user_third_party_identifier=self.on_remove_user_third_party_identifier,
        )

        if self._delivers:
            api.looping_background_call(
                self._deliver_pending, POLL_INTERVAL_MS, desc="annuaire_synapse_poll"
            )
            # Deliver what a previous run left in the queue.
            self._kick()

    @staticmethod
    def parse_config(config: Any) -> AnnuaireConfig:
        """Validates the module's `config:` mapping; Synapse refuses to start on an error."""
        from synapse.config import ConfigError

        try:
            return parse(config)
        except AnnuaireConfigError as err:
            raise ConfigError(str(err)) from None

    # ---- callbacks ----

    async def get_displayname_for_registration(
        self, uia_results: dict[str, Any], params: dict[str, Any]
    ) -> str | None:
        """annuaire's verified name for the address confirmed at registration, or None."""
        threepid = uia_results.get(EMAIL_IDENTITY) if isinstance(uia_results, dict) else None
        if not isinstance(threepid, dict) or threepid.get("medium") != "email":
            return None
        address = threepid.get("address")
        if not isinstance(address, str) or not address:
            return None
        try:
            answer = await self._client.call(
                "GET", "display_name", query={"medium": "email", "address": address}
            )
        except Exception as err:
            logger.warning(
                "annuaire_synapse: no display name from annuaire for a new account (%s);"
                " Synapse's default applies",
                type(err).__name__,
            )
            return None
        name = answer.body.get("displayname") if isinstance(answer.body, dict) else None
        if answer.status != 200 or not isinstance(name, str) or not name.strip():
            logger.info(
                "annuaire_synapse: no display name from annuaire for a new account (%s);"
                " Synapse's default applies",
                _describe(answer),
            )
            return None
        if len(name) > MAX_DISPLAYNAME_LENGTH:
            logger.warning("annuaire_synapse: annuaire's display name is too long; ignored")
            return None
        return name

    async def on_add_user_third_party_identifier(
        self, user_id: str, medium: str, address: str
    ) -> None:
        """An address was added to an account (at registration or later): `POST bind`."""
        if medium != "email":
            return
        await self._queue("bind", {"medium": "email", "address": address, "mxid": user_id})

    async def on_remove_user_third_party_identifier(
        self, user_id: str, medium: str, address: str
    ) -> None:
        """An address was removed from an account (also once per address on deactivation)."""
        if medium != "email":
            return
        await self._queue("unbind", {"medium": "email", "address": address, "mxid": user_id})

    async def on_profile_update(
        self, user_id: str, new_profile: Any, by_admin: bool, deactivation: bool
    ) -> None:
        """The global profile changed: `POST profile` with both fields."""
        if deactivation:
            # Synapse clears the profile while erasing a deactivated user; the `deactivated`
            # call that follows (with `erased: true`) tells annuaire more than a profile call.
            return
        await self._queue(
            "profile",
            {
                "user_id": user_id,
                "displayname": new_profile.display_name,
                "avatar_url": new_profile.avatar_url,
            },
        )

    async def on_user_deactivation_status_changed(
        self, user_id: str, deactivated: bool, by_admin: bool
    ) -> None:
        """A user was deactivated: `POST deactivated` with whether Synapse erased them."""
        if not deactivated:
            # annuaire's homeserver API has no reactivation call: addresses added back to the
            # account afterwards are bound again through on_add_user_third_party_identifier.
            logger.info("annuaire_synapse: a user was reactivated; nothing to tell annuaire")
            return
        now = self._api.get_current_time_msec()
        await self._queue_with(
            "deactivated",
            "annuaire_synapse_queue_deactivated",
            outbox.add_deactivated,
            user_id,
            now,
        )

    # ---- the queue ----

    async def _queue(self, call: str, body: dict[str, Any]) -> None:
        now = self._api.get_current_time_msec()
        await self._queue_with(call, "annuaire_synapse_queue", outbox.add, call, body, now)

    async def _queue_with(self, call: str, desc: str, func: Any, *args: Any) -> None:
        try:
            await self._ensure_table()
            await self._api.run_db_interaction(desc, func, *args)
        except Exception as err:
            # Never fail the user's action; say loudly that annuaire will miss this change.
            logger.error(
                "annuaire_synapse: could not queue a %s call (%s): annuaire will miss it",
                call,
                type(err).__name__,
            )
            return
        logger.debug("annuaire_synapse: queued a %s call", call)
        if self._delivers:
            self._kick()

    async def _ensure_table(self) -> None:
        if self._table_ready:
            return
        try:
            await self._api.run_db_interaction("annuaire_synapse_create_table", outbox.create_table)
        except Exception:
            # Another Synapse process may have created it at the same moment (PostgreSQL reports
            # a unique violation then): once more, IF NOT EXISTS now sees it.
            await self._api.run_db_interaction("annuaire_synapse_create_table", outbox.create_table)
        self._table_ready = True

    def _kick(self) -> None:
        self._api.run_as_background_process("annuaire_synapse_deliver", self._deliver_pending)

    async def _deliver_pending(self) -> None:
        """Delivers the due jobs in order; one delivery at a time in this process."""
        if self._delivering:
            # The running delivery reads the queue once more when it is done.
            self._again = True
            return
        self._delivering = True
        try:
            while True:
                self._again = False
                try:
                    await self._deliver_due()
                except Exception as err:
                    logger.error(
                        "annuaire_synapse: reading the queue failed (%s); next try in %d s",
                        type(err).__name__,
                        POLL_INTERVAL_MS // 1000,
                    )
                    return
                if not self._again:
                    return
        finally:
            self._delivering = False

    async def _deliver_due(self) -> None:
        await self._ensure_table()
        while True:
            jobs = await self._api.run_db_interaction(
                "annuaire_synapse_head", outbox.head, BATCH_SIZE
            )
            if not jobs:
                return
            for job in jobs:
                now = self._api.get_current_time_msec()
                if job.next_attempt_ts > now:
                    # Strict order: nothing overtakes the job at the head while it waits (an
                    # unbind must reach annuaire before a later bind of the same address).
                    self._wake_up_in(job.next_attempt_ts - now)
                    return
                if not await self._attempt(job, now):
                    return

    async def _attempt(self, job: Any, now: int) -> bool:
        """One delivery attempt; True when the job is done with (delivered or dropped)."""
        retry_after_ms = None
        try:
            answer = await self._client.call("POST", job.call, body=job.body)
        except Exception as err:
            reason = type(err).__name__
        else:
            verdict = judge(answer)
            if verdict is Verdict.DELIVERED:
                await self._api.run_db_interaction("annuaire_synapse_remove", outbox.remove, job.id)
                if job.attempts:
                    logger.info(
                        "annuaire_synapse: %s call %d delivered after %d failed attempt(s)",
                        job.call,
                        job.id,
                        job.attempts,
                    )
                else:
                    logger.debug("annuaire_synapse: %s call %d delivered", job.call, job.id)
                return True
            if verdict is Verdict.DROP:
                await self._api.run_db_interaction("annuaire_synapse_remove", outbox.remove, job.id)
                logger.warning(
                    "annuaire_synapse: annuaire refused %s call %d (%s); dropped",
                    job.call,
                    job.id,
                    _describe(answer),
                )
                return True
            reason = _describe(answer)
            if answer.status == 401:
                logger.error(
                    "annuaire_synapse: annuaire refused the module's token (%s): check"
                    " token_file (`annuaire homeserver add SERVER_NAME` makes one)",
                    reason,
                )
            elif answer.status < 500 and _misdirected(answer):
                logger.error(
                    "annuaire_synapse: %s is not an answer of annuaire's homeserver API: check"
                    " url (and that annuaire is recent enough to have this API)",
                    reason,
                )
            if answer.status == 429:
                retry_after_ms = answer.retry_after_ms
        attempts = job.attempts + 1
        delay = retry_delay_ms(attempts, retry_after_ms)
        await self._api.run_db_interaction(
            "annuaire_synapse_postpone", outbox.postpone, job.id, attempts, now + delay
        )
        logger.warning(
            "annuaire_synapse: %s call %d failed (%s), attempt %d; next in %.0f s",
            job.call,
            job.id,
            reason,
            attempts,
            delay / 1000,
        )
        self._wake_up_in(delay)
        return False

    def _wake_up_in(self, delay_ms: int) -> None:
        """Schedules a delivery when the head job is due, sooner than the next poll."""
        if delay_ms >= POLL_INTERVAL_MS:
            return
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = self._api.delayed_background_call(
            delay_ms, self._deliver_pending, desc="annuaire_synapse_retry"
        )
