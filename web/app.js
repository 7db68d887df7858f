// Lessonstream's reference web app: routes (the hash), the signed-in shell, the learner's pages.

import { api, ApiError, isStaff, onThisOrigin, session, wait } from "./api.js";
import { announce, errorBox, formatDate, formatSeconds, h, progressBar, show } from "./dom.js";
import { ProgressReporter } from "./player.js";
import { courseDashboard, learnerDetail, teaching } from "./teach.js";

const SAMPLE_VIDEO = "media/sample.webm";
let leaving = []; // what the current page does before the next one (the player's last heartbeat)

// ---------------------------------------------------------------- routes

const ROUTES = [
  [/^\/signin$/, signIn, { open: true }],
  [/^\/$/, myCourses],
  [/^\/courses\/(\d+)$/, coursePage],
  [/^\/courses\/(\d+)\/lessons\/(\d+)$/, lessonPage],
  [/^\/teach$/, teaching, { staff: true }],
  [/^\/teach\/courses\/(\d+)$/, courseDashboard, { staff: true }],
  [/^\/teach\/courses\/(\d+)\/learners\/([^/]+)$/, learnerDetail, { staff: true }],
];

async function route() {
  for (const stop of leaving.splice(0)) await stop();
  // A host platform hands the app its token in the fragment (#token=...): kept for the
  // tab, then removed from the address bar and history.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    session.start(fragment.get("token"));
    history.replaceState(null, "", `${location.pathname}#/`);
  }
  const path = location.hash.startsWith("#/") ? location.hash.slice(1) : "/";
  const current = session.get();
  renderNav(current);
  for (const [pattern, view, options = {}] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    if (!options.open && !current) {
      sessionStorage.setItem("lessonstream.after-sign-in", location.hash);
      location.hash = "#/signin";
      return;
    }
    if (options.staff && !isStaff(current.user)) {
      show("Not allowed", h("h1", {}, "Not allowed"), h("p", {}, "This page is for instructors and administrators."));
      return;
    }
    try {
      await view(...match.slice(1).map(decodeURIComponent));
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) {
        show("Error", h("h1", {}, "Something went wrong"), errorBox(error,
          h("button", { type: "button", onclick: () => route() }, "Try again")));
      }
    }
    return;
  }
  show("Not found", h("h1", {}, "Page not found"), h("p", {}, h("a", { href: "#/" }, "Go to my courses")));
}

function renderNav(current) {
  const nav = document.getElementById("nav");
  if (!current) {
    nav.replaceChildren();
    return;
  }
  nav.replaceChildren(...[
    h("a", { href: "#/" }, "My courses"),
    isStaff(current.user) ? h("a", { href: "#/teach" }, "Teaching") : null,
    h("span", { class: "who" }, current.user.name),
    h("button", { type: "button", class: "link", onclick: () => { session.end(); location.hash = "#/signin"; } },
      "Sign out"),
  ].filter(Boolean));
}

// ---------------------------------------------------------------- sign-in

async function signIn() {
  // After a refused or expired token (api.js), not on a first visit.
  const reason = sessionStorage.getItem("lessonstream.expired") ? "Your session has ended: please sign in again." : null;
  sessionStorage.removeItem("lessonstream.expired");
  let people;
  try {
    people = (await api("/api/dev/people", { auth: false })).body.data;
  } catch (error) {
    if (error.code === "dev_tokens_disabled") {
      show("Sign in", h("h1", {}, "Sign in"),
        h("p", {}, "Open Lessonstream from your learning platform: it signs you in."),
        h("p", { class: "muted" }, error.message));
      return;
    }
    throw error;
  }
  const start = async (person) => {
    const answer = await api("/api/dev/token", { method: "POST", auth: false, body: person });
    const started = session.start(answer.body.data.token);
    const back = sessionStorage.getItem("lessonstream.after-sign-in");
    sessionStorage.removeItem("lessonstream.after-sign-in");
    location.hash = back && back !== "#/signin" ? back : isStaff(started.user) ? "#/teach" : "#/";
  };
  const form = h("form", { class: "stack", onsubmit: async (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    try {
      await start({ user_id: data.get("user_id"), name: data.get("name"), email: data.get("email"), role: data.get("role") });
    } catch (error) {
      form.append(errorBox(error));
    }
  } },
    h("label", { for: "user_id" }, "User id"), h("input", { id: "user_id", name: "user_id", required: true, autocomplete: "username" }),
    h("label", { for: "name" }, "Name"), h("input", { id: "name", name: "name", autocomplete: "name" }),
    h("label", { for: "email" }, "Email"), h("input", { id: "email", name: "email", type: "email", autocomplete: "email" }),
    h("label", { for: "role" }, "Role"),
    h("select", { id: "role", name: "role" }, ["learner", "instructor", "admin"].map((r) => h("option", { value: r }, r))),
    h("button", { type: "submit" }, "Sign in"));
  show("Sign in",
    h("h1", {}, "Sign in"),
    reason ? h("p", { class: "notice" }, reason) : null,
    h("p", { class: "muted" }, "Development sign-in: pick a demo person (", h("code", {}, "lessonstream seed-demo"),
      " gives them a course and progress) or anyone else. Production refuses it; there the host platform hands the app a token."),
    h("h2", {}, "Demo people"),
    h("ul", { class: "people" }, people.map((person) => h("li", {},
      h("button", { type: "button", onclick: () => start(person).catch((error) => announce(error.message, "error")) },
        `${person.name}`, h("span", { class: "muted" }, ` ${person.role}`))))),
    h("h2", {}, "Someone else"),
    form);
}

// ---------------------------------------------------------------- learner: my courses

async function myCourses() {
  const rows = (await api("/api/courses/my-courses?per_page=100")).body.data;
  const enroll = h("form", { class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    const id = new FormData(event.target).get("course_id");
    try {
      await api(`/api/courses/${encodeURIComponent(id)}/enroll`, { method: "POST" });
      location.hash = `#/courses/${id}`;
    } catch (error) {
      enroll.after(errorBox(error));
    }
  } },
    h("label", { for: "course_id" }, "Enroll in course number"),
    h("input", { id: "course_id", name: "course_id", inputmode: "numeric", pattern: "[0-9]+", required: true, size: 6 }),
    h("button", { type: "submit" }, "Enroll"));
  show("My courses",
    h("h1", {}, "My courses"),
    rows.length === 0 ? h("p", {}, "You are not enrolled in any course yet.") :
      h("ul", { class: "cards" }, rows.map((row) => h("li", { class: "card", "data-course-id": row.course_id },
        h("h2", {}, h("a", { href: `#/courses/${row.course_id}` }, row.course_title)),
        progressBar(row.progress_percentage, `Progress in ${row.course_title}`),
        h("p", { class: "muted" }, row.total_lessons ? `${row.completed_lessons} of ${row.total_lessons} lessons` : "Not started",
          row.status === "completed" ? ` · completed ${formatDate(row.completed_at)}` : "",
          row.last_accessed ? ` · last visit ${formatDate(row.last_accessed)}` : ""),
        row.certificate_url && !row.certificate_revoked_at
          ? h("p", {}, h("a", { href: onThisOrigin(row.certificate_url) }, "Certificate (PDF)")) : null,
        row.certificate_revoked_at ? h("p", { class: "warning" }, `Certificate revoked: ${row.certificate_revocation_reason || ""}`) : null))),
    enroll);
}

// ---------------------------------------------------------------- learner: a course

async function courseState(courseId) {
  // The three at once: the course, the learner's standing in it, their lesson records.
  const [course, enrolled] = await Promise.all([
    api(`/api/courses/${courseId}`).then((answer) => answer.body.data),
    Promise.all([api(`/api/courses/${courseId}/progress`), api(`/api/progress?course_id=${courseId}`)])
      .catch((error) => {
        if (error.code !== "not_enrolled") throw error;
        return null;
      }),
  ]);
  const standing = enrolled ? enrolled[0].body.data : null;
  const records = enrolled ? enrolled[1].body : [];
  const byLesson = new Map(records.map((r) => [r.lesson_id, r]));
  const locked = new Set((standing?.locked_lessons || []).map((l) => l.id));
  return { course, standing, byLesson, locked };
}

function lessonStatus(lesson, state) {
  const record = state.byLesson.get(lesson.id);
  if (record?.completed) return { key: "completed", text: "Completed" };
  if (state.locked.has(lesson.id)) {
    const next = state.standing?.next_lesson;
    return { key: "locked", text: next ? `Locked: complete “${next.title}” first` : "Locked" };
  }
  if (record) return { key: "started", text: lesson.kind === "video" && record.watched_ratio != null
    ? `Started · ${Math.round(record.watched_ratio * 100)}% watched` : "Started" };
  return { key: "new", text: "Not started" };
}

async function coursePage(courseId) {
  const state = await courseState(courseId);
  const { course, standing } = state;
  if (!standing) {
    show(course.title, h("h1", {}, course.title), h("p", {}, course.description || ""),
      h("p", {}, "You are not enrolled in this course."),
      h("button", { type: "button", onclick: async () => {
        await api(`/api/courses/${courseId}/enroll`, { method: "POST" });
        route();
      } }, "Enroll"));
    return;
  }
  const next = standing.next_lesson;
  const certificate = h("section", { id: "certificate", "aria-labelledby": "certificate-title" });
  show(course.title,
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "My courses")),
    h("h1", {}, course.title),
    course.description ? h("p", {}, course.description) : null,
    progressBar(standing.progress_percentage, "Course progress"),
    h("p", { class: "muted" }, `${standing.completed_lessons} of ${standing.total_lessons} required lessons · time spent ${standing.time_spent}`,
      course.requires_sequential_progress ? " · lessons open in order" : ""),
    h("h2", {}, "Lessons"),
    h("ol", { class: "lessons" }, course.lessons.map((lesson) => {
      const status = lessonStatus(lesson, state);
      const isNext = next && next.id === lesson.id;
      const title = status.key === "locked"
        ? h("span", { class: "title", "aria-disabled": "true" }, lesson.title)
        : h("a", { class: "title", href: `#/courses/${courseId}/lessons/${lesson.id}` }, lesson.title);
      return h("li", { class: `lesson ${status.key}${isNext ? " next" : ""}`, "data-lesson-id": lesson.id, "data-status": status.key },
        title,
        h("span", { class: "meta" }, lesson.kind === "video" ? `Video · ${formatSeconds(lesson.duration_seconds)}` : "Reading",
          lesson.is_required ? "" : " · optional"),
        h("span", { class: "state" }, isNext ? `Up next · ${status.text}` : status.text));
    })),
    standing.completed_at ? certificate : null);
  if (standing.completed_at) await showCertificate(courseId, certificate);
}

async function showCertificate(courseId, section) {
  section.replaceChildren(h("h2", { id: "certificate-title" }, "Your certificate"), h("p", {}, "Course completed. Looking for your certificate…"));
  for (let attempt = 0; attempt < 30; attempt += 1) {
    let answer;
    try {
      answer = await api(`/api/courses/${courseId}/certificate`);
    } catch (error) {
      if (error.code === "certificate_not_available") {
        section.replaceChildren(h("h2", { id: "certificate-title" }, "Course completed"), h("p", {}, "This course gives no certificate."));
      } else {
        section.replaceChildren(h("h2", { id: "certificate-title" }, "Your certificate"), errorBox(error));
      }
      return;
    }
    if (answer.status === 200) {
      const c = answer.body.data;
      section.replaceChildren(
        h("h2", { id: "certificate-title" }, "Your certificate"),
        h("p", {}, `Awarded to ${c.student_name} for ${c.course_title} on ${formatDate(c.issued_at)}`,
          c.expires_at ? `, valid until ${formatDate(c.expires_at)}` : "", "."),
        h("ul", {},
          h("li", {}, h("a", { href: onThisOrigin(c.certificate_url) }, "Download the certificate (PDF)")),
          h("li", {}, h("a", { href: onThisOrigin(c.verification_url) }, "Verification page"), " — share this link: ",
            h("code", {}, c.verification_url)),
          c.credential_url ? h("li", {}, h("a", { href: onThisOrigin(c.credential_url) }, "Signed credential (Open Badges 3.0)")) : null));
      return;
    }
    section.querySelector("p").textContent = "Your certificate is being generated…";
    const after = Number(answer.headers.get("Retry-After")) || 2;
    await wait(Math.min(after, 10) * 1000);
    if (!section.isConnected) return;
  }
}

// ---------------------------------------------------------------- learner: a lesson

async function lessonPage(courseId, lessonId) {
  const id = Number(lessonId);
  const state = await courseState(courseId);
  const { course, standing } = state;
  const index = course.lessons.findIndex((l) => l.id === id);
  if (index < 0) throw new ApiError(404, { message: "This lesson is not in the course." });
  const lesson = course.lessons[index];
  const crumbs = h("p", { class: "crumbs" }, h("a", { href: "#/" }, "My courses"), " › ",
    h("a", { href: `#/courses/${courseId}` }, course.title));
  const heading = h("h1", {}, lesson.title);
  const where = h("p", { class: "muted" }, `Lesson ${index + 1} of ${course.lessons.length}`);
  if (!standing) {
    show(lesson.title, crumbs, heading, h("p", {}, "Enroll in the course to follow this lesson."),
      h("a", { href: `#/courses/${courseId}` }, "Go to the course"));
    return;
  }
  const status = lessonStatus(lesson, state);
  if (status.key === "locked") {
    const next = standing.next_lesson;
    show(lesson.title, crumbs, heading, where,
      h("p", { class: "notice", "data-status": "locked" }, status.text, "."),
      next ? h("p", {}, h("a", { href: `#/courses/${courseId}/lessons/${next.id}` }, `Go to “${next.title}”`)) : null);
    return;
  }
  const outcome = h("div", { id: "outcome", "aria-live": "polite" });
  const record = state.byLesson.get(id);
  const done = h("p", { class: "done", "data-status": record?.completed ? "completed" : "open" },
    record?.completed ? `Completed on ${formatDate(record.completed_at)}` : "");
  const complete = async () => {
    try {
      const answer = (await api(`/api/courses/${courseId}/lessons/${id}/complete`, { method: "POST" })).body;
      done.textContent = "Completed";
      done.dataset.status = "completed";
      const next = answer.data.next_lesson;
      outcome.replaceChildren(
        h("p", { class: "success" }, answer.message, ` · course ${answer.data.progress_percentage}% complete`),
        next ? h("p", {}, h("a", { href: `#/courses/${courseId}/lessons/${next.id}`, class: "button" }, `Next: ${next.title}`))
          : h("p", {}, h("a", { href: `#/courses/${courseId}`, class: "button" },
            answer.data.progress_percentage === 100 ? "Course complete: see your certificate" : "Back to the course")));
    } catch (error) {
      // A coverage rule's refusal (lesson_not_watched) says how much is watched and needed.
      const data = error.data || {};
      outcome.replaceChildren(errorBox(error, data.watched_ratio != null && data.video_completion_threshold != null
        ? h("p", {}, `Watched ${Math.round(data.watched_ratio * 100)}%, ${Math.round(data.video_completion_threshold * 100)}% needed.`) : null));
    }
  };
  if (lesson.kind !== "video") {
    show(lesson.title, crumbs, heading, where, done,
      h("p", {}, "A reading lesson: its text lives in your platform's content."),
      record?.completed ? null : h("button", { type: "button", onclick: complete }, "Mark as complete"),
      outcome);
    return;
  }
  const video = h("video", { controls: true, preload: "metadata", playsinline: true, src: SAMPLE_VIDEO,
                             "aria-label": `Video: ${lesson.title}` });
  const resumeNote = h("p", { class: "muted", id: "resume" });
  const saved = h("p", { class: "muted", id: "saved" });
  show(lesson.title, crumbs, heading, where, h("div", { class: "player" }, video), resumeNote, saved, done, outcome);

  const reporter = new ProgressReporter(video, Number(courseId), id);
  reporter.onSaved = (reading) => { saved.textContent = `Progress saved at ${formatSeconds(reading.last_position)}`; };
  reporter.onError = (error) => { saved.textContent = `Progress not saved: ${error.message}`; };
  leaving.push(() => reporter.stop());
  const resumeAt = record?.last_position || 0;
  video.addEventListener("loadedmetadata", () => {
    if (resumeAt > 0 && resumeAt < video.duration - 1) {
      video.currentTime = resumeAt;
      resumeNote.textContent = `Resuming where you stopped, at ${formatSeconds(resumeAt)}.`;
    }
  }, { once: true });
  video.addEventListener("ended", async () => {
    await reporter.beat();
    if (!record?.completed) await complete();
  });
}

// ---------------------------------------------------------------- start

document.getElementById("skip").addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("main").focus();
});
window.addEventListener("hashchange", route);
route();
