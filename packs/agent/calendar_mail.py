"""A person's calendar and mailbox: contacts, events, received mail, and what they send.

Times are local wall-clock times written ``YYYY-MM-DDTHH:MM`` (seconds ``:00`` accepted).
Sending never fails for a well-formed address, so a mail to the wrong person is a real mistake
the end state keeps (``sent``), as a mail server would.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bench.packs.agent.environment import Environment, ToolError, tool

TIME = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:00)?$",
        "description": "Local time, YYYY-MM-DDTHH:MM"}
DATE = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "description": "YYYY-MM-DD"}
EMAIL = {"type": "string", "pattern": "^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$"}
EMAILS = {"type": "array", "items": EMAIL}
EVENT_ID = {"type": "string", "pattern": "^ev-[0-9]+$"}


def _minute(text: str) -> str:
    """``2025-06-12T15:00:00`` -> ``2025-06-12T15:00``, checking it is a real time."""
    short = text[:16]
    try:
        datetime.strptime(short, "%Y-%m-%dT%H:%M")
    except ValueError:
        raise ToolError("validation_error", f"{text!r} is not a valid time") from None
    return short


class CalendarMail(Environment):
    name = "calendar_mail"
    summary = "your work calendar, contacts and mailbox"

    def _table(self, name: str) -> dict[str, dict[str, Any]]:
        table: dict[str, dict[str, Any]] = self.state.setdefault(name, {})
        return table

    def _event(self, event_id: str) -> dict[str, Any]:
        event = self._table("events").get(event_id)
        if event is None or event.get("status") == "cancelled":
            raise ToolError("not_found", f"no event {event_id}")
        return event

    def _overlaps(self, start: str, end: str, skip: str = "") -> list[str]:
        return [eid for eid, e in sorted(self._table("events").items())
                if eid != skip and e.get("status") != "cancelled" and e["start"] < end and start < e["end"]]

    @tool("Find contacts whose name, email or team contains a text.", {"query": {"type": "string", "minLength": 2}}, required=["query"])
    def search_contacts(self, query: str) -> dict[str, Any]:
        needle = query.casefold()
        found = [c for c in self._table("contacts").values()
                 if any(needle in str(c.get(key, "")).casefold() for key in ("name", "email", "team"))]
        return {"contacts": sorted(found, key=lambda c: c["name"])}

    @tool("List the events between two dates (both included).", {"from_date": DATE, "to_date": DATE}, required=["from_date", "to_date"])
    def list_events(self, from_date: str, to_date: str) -> dict[str, Any]:
        if to_date < from_date:
            raise ToolError("validation_error", "to_date is before from_date")
        events = [
            {"id": eid, **{k: v for k, v in e.items() if k != "status"}}
            for eid, e in self._table("events").items()
            if e.get("status") != "cancelled" and from_date <= e["start"][:10] <= to_date
        ]
        return {"events": sorted(events, key=lambda e: (e["start"], e["id"]))}

    @tool(
        "Create a calendar event and invite attendees by email.",
        {"title": {"type": "string", "minLength": 1}, "start": TIME, "end": TIME, "attendees": EMAILS,
         "location": {"type": "string"}},
        required=["title", "start", "end"],
    )
    def create_event(self, title: str, start: str, end: str, attendees: list[str] | None = None, location: str = "") -> dict[str, Any]:
        start, end = _minute(start), _minute(end)
        if end <= start:
            raise ToolError("validation_error", "end must be after start")
        event_id = self.next_id("event", "ev-")
        self._table("events")[event_id] = {"title": title, "start": start, "end": end, "attendees": sorted(set(attendees or [])),
                                           "location": location, "status": "confirmed"}
        return {"event_id": event_id, "overlaps": self._overlaps(start, end, event_id)}

    @tool(
        "Change an event's time, title, location or attendees (only the fields given change).",
        {"event_id": EVENT_ID, "title": {"type": "string", "minLength": 1}, "start": TIME, "end": TIME,
         "attendees": EMAILS, "location": {"type": "string"}},
        required=["event_id"],
    )
    def update_event(self, event_id: str, **changes: Any) -> dict[str, Any]:
        event = self._event(event_id)
        updated = dict(event)
        for key in ("start", "end"):
            if key in changes:
                changes[key] = _minute(changes[key])
        if "attendees" in changes:
            changes["attendees"] = sorted(set(changes["attendees"]))
        updated.update(changes)
        if updated["end"] <= updated["start"]:
            raise ToolError("validation_error", "end must be after start")
        event.update(updated)
        return {"event_id": event_id, "changed": sorted(changes), "overlaps": self._overlaps(event["start"], event["end"], event_id)}

    @tool("Cancel an event (attendees are told by the calendar).", {"event_id": EVENT_ID}, required=["event_id"])
    def cancel_event(self, event_id: str) -> dict[str, Any]:
        self._event(event_id)["status"] = "cancelled"
        return {"event_id": event_id, "status": "cancelled"}

    @tool("Search received mail by sender, subject or text.", {"query": {"type": "string", "minLength": 2}}, required=["query"])
    def search_mail(self, query: str) -> dict[str, Any]:
        needle = query.casefold()
        found = [
            {"id": mid, "from": m["from"], "subject": m["subject"], "date": m["date"]}
            for mid, m in self._table("mail").items()
            if any(needle in m[key].casefold() for key in ("from", "subject", "body"))
        ]
        return {"messages": sorted(found, key=lambda m: (m["date"], m["id"]), reverse=True)}

    @tool("Read one received message in full.", {"message_id": {"type": "string", "pattern": "^m-[0-9]+$"}}, required=["message_id"])
    def read_mail(self, message_id: str) -> dict[str, Any]:
        message = self._table("mail").get(message_id)
        if message is None:
            raise ToolError("not_found", f"no message {message_id}")
        return {"id": message_id, **message}

    @tool(
        "Send an email.",
        {"to": {**EMAILS, "minItems": 1}, "subject": {"type": "string", "minLength": 1}, "body": {"type": "string", "minLength": 1},
         "cc": EMAILS},
        required=["to", "subject", "body"],
    )
    def send_mail(self, to: list[str], subject: str, body: str, cc: list[str] | None = None) -> dict[str, Any]:
        sent: list[dict[str, Any]] = self.state.setdefault("sent", [])
        mail_id = self.next_id("mail", "s-")
        sent.append({"id": mail_id, "to": to, "cc": cc or [], "subject": subject, "body": body})
        return {"sent": mail_id}

    @tool("List the mail you have sent, newest first.")
    def list_sent(self) -> dict[str, Any]:
        sent: list[dict[str, Any]] = self.state.get("sent", [])
        return {"messages": [{"id": m["id"], "to": m["to"], "subject": m["subject"]} for m in reversed(sent)]}
