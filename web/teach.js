// Instructors and administrators: their courses, a course's learners and analytics, a learner.

import { api } from "./api.js";
import { barChart, figures, percent, rate, table } from "./charts.js";
import { errorBox, formatDate, formatSeconds, h, progressBar, show } from "./dom.js";

const PER_PAGE = 20;

export async function teaching() {
  const rows = (await api("/api/admin/courses?per_page=100")).body.data;
  show("Teaching",
    h("h1", {}, "Courses you manage"),
    rows.length === 0 ? h("p", {}, "No course lists you as its instructor.") :
      table(["Course", "Status", "Lessons", "Learners", "Completed"], rows.map((c) => [
        h("a", { href: `#/teach/courses/${c.id}` }, c.title), c.status, String(c.total_lessons),
        String(c.learners), String(c.completed),
      ])));
}

// ---------------------------------------------------------------- a course's dashboard

export async function courseDashboard(courseId) {
  const course = (await api(`/api/admin/courses/${courseId}`)).body.data;
  const students = h("section", { id: "students", "aria-labelledby": "students-title" });
  const analytics = h("section", { id: "analytics", "aria-labelledby": "analytics-title" });
  show(course.title,
    h("p", { class: "crumbs" }, h("a", { href: "#/teach" }, "Teaching")),
    h("h1", {}, course.title),
    h("p", { class: "muted" }, `Course ${course.id} · ${course.status} · ${course.total_lessons} lessons`),
    students, analytics);
  await Promise.all([
    studentsTable(courseId, students, { page: 1, order: "desc" }),
    analyticsCharts(courseId, course, analytics, {}),
  ]);
}

async function studentsTable(courseId, section, { page, order }) {
  const query = new URLSearchParams({ page, per_page: PER_PAGE, orderby: "progress_percentage", order });
  let answer;
  try {
    answer = (await api(`/api/courses/${courseId}/students?${query}`)).body;
  } catch (error) {
    section.replaceChildren(h("h2", { id: "students-title" }, "Learners"), errorBox(error));
    return;
  }
  const { total, per_page: size } = answer.meta;
  const pages = Math.max(1, Math.ceil(total / size));
  const redo = (changes) => studentsTable(courseId, section, { page, order, ...changes });
  const sortButton = h("button", { type: "button", class: "link", onclick: () => redo({ page: 1, order: order === "desc" ? "asc" : "desc" }) },
    "Progress", h("span", { "aria-hidden": "true" }, order === "desc" ? " ▼" : " ▲"));
  section.replaceChildren(
    h("h2", { id: "students-title" }, `Learners (${total})`),
    h("table", { class: "students" },
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Learner"),
        h("th", { scope: "col", "aria-sort": order === "desc" ? "descending" : "ascending" }, sortButton),
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col" }, "Last visit"))),
      h("tbody", {}, answer.data.map((row) => h("tr", { "data-user-id": row.user_id, "data-progress": row.progress_percentage },
        h("td", {}, h("a", { href: `#/teach/courses/${courseId}/learners/${encodeURIComponent(row.user_id)}` },
          row.display_name || row.username || row.user_id), h("br"), h("span", { class: "muted" }, row.email)),
        h("td", {}, progressBar(row.progress_percentage, `Progress of ${row.display_name || row.user_id}`)),
        h("td", {}, row.status),
        h("td", {}, row.last_accessed ? formatDate(row.last_accessed) : "never"))))),
    h("nav", { class: "pager", "aria-label": "Learner pages" },
      h("button", { type: "button", disabled: page <= 1, onclick: () => redo({ page: page - 1 }) }, "Previous"),
      h("span", {}, `Page ${page} of ${pages}`),
      h("button", { type: "button", disabled: page >= pages, onclick: () => redo({ page: page + 1 }) }, "Next")));
}

async function analyticsCharts(courseId, course, section, filter) {
  const query = new URLSearchParams(Object.entries(filter).filter(([, v]) => v));
  const form = h("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    analyticsCharts(courseId, course, section, {
      from: data.get("from"), to: data.get("to"), inactive_days: data.get("inactive_days"),
    });
  } },
    h("label", {}, "Enrolled from ", h("input", { type: "date", name: "from", value: filter.from || "" })),
    h("label", {}, "to ", h("input", { type: "date", name: "to", value: filter.to || "" })),
    h("label", {}, "Inactive after ", h("input", { type: "number", name: "inactive_days", min: "1", max: "3650",
                                                    value: filter.inactive_days || "14", size: 4 }), " days"),
    h("button", { type: "submit" }, "Apply"),
    h("button", { type: "button", onclick: () => downloadCsv(courseId, query) }, "Download CSV"));
  let report;
  try {
    report = (await api(`/api/admin/courses/${courseId}/analytics?${query}`)).body.data;
  } catch (error) {
    section.replaceChildren(h("h2", { id: "analytics-title" }, "Analytics"), form, errorBox(error));
    return;
  }
  const c = report.completion;
  const videos = new Set(course.lessons.filter((l) => l.kind === "video").map((l) => l.id));
  const lessonLabel = (l) => `${l.order}. ${l.title}`;
  const mostFunnel = Math.max(1, ...report.drop_off.lessons.map((l) => l.learners));
  section.replaceChildren(
    h("h2", { id: "analytics-title" }, "Analytics"),
    form,
    h("div", { class: "charts" },
      figures({ id: "completion", title: "Completion", items: [
        ["Enrolled", String(c.enrolled), "enrolled"],
        ["Completed", String(c.completed), "completed"],
        ["Completion rate", rate(c.completion_rate), "completion_rate"],
      ] }),
      figures({ id: "time-to-completion", title: "Time to completion", items: [
        ["Learners who completed", String(report.time_to_completion.completed), "completed"],
        ["Median", days(report.time_to_completion.median_days), "median_days"],
        ["90th percentile", days(report.time_to_completion.p90_days), "p90_days"],
      ] }),
      barChart({
        id: "difficulty", title: "Lesson difficulty",
        description: "Completion rate of each lesson among the learners who started it, hardest first.",
        columns: ["Lesson", "Started", "Completed", "Completion rate"],
        rows: report.lesson_difficulty.map((l) => ({
          key: l.lesson_id, label: lessonLabel(l), value: l.completion_rate ?? 0, max: 100,
          text: l.completion_rate == null ? "not started" : `${rate(l.completion_rate)} (${l.completed} of ${l.started})`,
          cells: [lessonLabel(l), String(l.started), String(l.completed), rate(l.completion_rate)],
        })),
      }),
      barChart({
        id: "drop-off", title: "Drop-off",
        description: `Where the ${report.drop_off.learners} learners inactive for ${report.drop_off.inactive_days} days stopped`
          + ` (${report.drop_off.without_activity} never started).`,
        columns: ["Lesson", "Learners who stopped there"],
        rows: report.drop_off.lessons.map((l) => ({
          key: l.lesson_id, label: lessonLabel(l), value: l.learners, max: mostFunnel, text: String(l.learners),
          cells: [lessonLabel(l), String(l.learners)],
        })),
      }),
      barChart({
        id: "engagement", title: "Engagement",
        description: "Share of each video lesson its learners watched, on average.",
        columns: ["Lesson", "Learners", "Average watched", "Average time"],
        rows: report.engagement.filter((l) => videos.has(l.lesson_id)).map((l) => ({
          key: l.lesson_id, label: lessonLabel(l), value: l.average_watched_ratio ?? 0, max: 1,
          text: l.average_watched_ratio == null ? (l.learners ? `${l.learners} learners` : "no learners")
            : `${percent(l.average_watched_ratio)} of ${l.learners}`,
          cells: [lessonLabel(l), String(l.learners), percent(l.average_watched_ratio),
                  l.average_watch_seconds == null ? "—" : formatSeconds(l.average_watch_seconds)],
        })),
      })),
    h("p", { class: "muted" }, `Generated ${new Date(report.generated_at).toLocaleString()}.`));
}

const days = (value) => (value === null || value === undefined ? "—" : `${value} days`);

async function downloadCsv(courseId, query) {
  const csv = new URLSearchParams(query);
  csv.set("format", "csv");
  const answer = await api(`/api/admin/courses/${courseId}/analytics?${csv}`, { accept: "text/csv" });
  const link = h("a", { href: URL.createObjectURL(new Blob([answer.body], { type: "text/csv" })),
                        download: `course-${courseId}-analytics.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

// ---------------------------------------------------------------- one learner

export async function learnerDetail(courseId, userId) {
  const [courseAnswer, standingAnswer, recordsAnswer] = await Promise.all([
    api(`/api/admin/courses/${courseId}`),
    api(`/api/courses/${courseId}/progress?user_id=${encodeURIComponent(userId)}`),
    api(`/api/admin/learners/${encodeURIComponent(userId)}/progress?course_id=${courseId}`),
  ]);
  const course = courseAnswer.body.data;
  const standing = standingAnswer.body.data;
  const records = recordsAnswer.body;
  const byLesson = new Map(records.map((r) => [r.lesson_id, r]));
  show(`${userId} in ${course.title}`,
    h("p", { class: "crumbs" }, h("a", { href: "#/teach" }, "Teaching"), " › ",
      h("a", { href: `#/teach/courses/${courseId}` }, course.title)),
    h("h1", {}, `Learner ${userId}`),
    progressBar(standing.progress_percentage, "Course progress"),
    h("p", { class: "muted" }, `${standing.completed_lessons} of ${standing.total_lessons} required lessons · time spent ${standing.time_spent}`,
      standing.completed_at ? ` · completed ${formatDate(standing.completed_at)}` : "",
      standing.next_lesson ? ` · next: ${standing.next_lesson.title}` : ""),
    table(["Lesson", "Status", "Watched", "Position", "Time spent", "Last activity"], course.lessons.map((lesson) => {
      const r = byLesson.get(lesson.id);
      return [lesson.title, r ? (r.completed ? `completed ${formatDate(r.completed_at)}` : "started") : "not started",
              r && r.watched_ratio != null ? percent(r.watched_ratio) : "—",
              r ? formatSeconds(r.last_position) : "—", r ? formatSeconds(r.time_spent_seconds) : "—",
              r ? formatDate(r.updated_at) : "—"];
    })));
}
