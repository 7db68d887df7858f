"""The demo people of a development stack: ``lessonstream seed-demo`` gives them courses and
progress, and the reference web app's development sign-in lists them (enrollment's
``GET /api/dev/people``). Their tokens are minted by the development-only token endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DemoPerson:
    user_id: str
    name: str
    email: str
    role: Literal["learner", "instructor", "admin"]


DEMO_INSTRUCTOR = DemoPerson("demo-instructor", "Margaret Hamilton", "margaret@example.com", "instructor")
DEMO_ADMIN = DemoPerson("demo-admin", "Demo Admin", "admin@example.com", "admin")
DEMO_LEARNERS = (
    DemoPerson("demo-learner-1", "Ada Lovelace", "ada@example.com", "learner"),
    DemoPerson("demo-learner-2", "Grace Hopper", "grace@example.com", "learner"),
    DemoPerson("demo-learner-3", "Alan Turing", "alan@example.com", "learner"),
    DemoPerson("demo-learner-4", "Katherine Johnson", "katherine@example.com", "learner"),
    DemoPerson("demo-learner-5", "Edsger Dijkstra", "edsger@example.com", "learner"),
    DemoPerson("demo-learner-6", "Barbara Liskov", "barbara@example.com", "learner"),
)
DEMO_PEOPLE = (*DEMO_LEARNERS, DEMO_INSTRUCTOR, DEMO_ADMIN)
