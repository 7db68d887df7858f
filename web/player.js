// The lesson player's side of the progress API: where the learner is, what they played.
//
// While the video plays, a heartbeat every 5 s carries the position and the media ranges
// played since the previous one (played_segments: the server counts coverage from them).
// Pausing, seeking away and leaving the lesson send one at once; closing or hiding the
// page sends the last one with navigator.sendBeacon, which outlives the page but cannot
// carry headers, so its token travels in the body (access_token).

import { api, session } from "./api.js";

export const HEARTBEAT_MS = 5000;
// A jump larger than this between two time updates is a seek, not playback.
const CONTINUOUS_S = 1.5;

const round = (x) => Math.round(x * 100) / 100;

export class ProgressReporter {
  constructor(video, courseId, lessonId) {
    this.video = video;
    this.courseId = courseId;
    this.lessonId = lessonId;
    this.pending = []; // ranges played and not yet reported
    this.run = null; // the range being played now: [start, end]
    this.timer = null;
    this.stopped = false;
    this.inFlight = Promise.resolve();
    this.lastError = null;
    this.listeners = [];
    this.on(video, "playing", () => this.startRun());
    this.on(video, "timeupdate", () => this.extendRun());
    this.on(video, "seeking", () => this.closeRun());
    this.on(video, "pause", () => { this.closeRun(); this.beat(); });
    // A heartbeat as playback starts: the server counts time spent between heartbeats.
    this.on(video, "play", () => { this.beat(); this.startTimer(); });
    this.on(video, "pause", () => this.stopTimer());
    this.on(video, "ended", () => this.stopTimer());
    this.on(window, "pagehide", () => this.beacon());
    this.on(document, "visibilitychange", () => { if (document.visibilityState === "hidden") this.beacon(); });
  }

  on(target, type, handler) {
    target.addEventListener(type, handler);
    this.listeners.push(() => target.removeEventListener(type, handler));
  }

  startRun() {
    this.closeRun();
    const t = this.video.currentTime;
    this.run = [t, t];
  }

  extendRun() {
    if (this.video.paused || this.video.seeking) return;
    const t = this.video.currentTime;
    const rate = this.video.playbackRate || 1;
    if (this.run && t >= this.run[1] && t - this.run[1] <= CONTINUOUS_S * rate) {
      this.run[1] = t;
    } else {
      this.closeRun();
      this.run = [t, t];
    }
  }

  closeRun() {
    if (this.run && this.run[1] - this.run[0] >= 0.05) this.pending.push(this.run);
    this.run = null;
  }

  /** The ranges played since the last report (the current run is cut where it stands). */
  takeSegments() {
    const out = this.pending;
    this.pending = [];
    if (this.run && this.run[1] - this.run[0] >= 0.05) {
      out.push([this.run[0], this.run[1]]);
      this.run = [this.run[1], this.run[1]];
    }
    return out.map(([a, b]) => [round(a), round(b)]);
  }

  reading() {
    const position = round(this.video.currentTime || 0);
    return {
      course_id: this.courseId,
      lesson_id: this.lessonId,
      video_progress: position,
      last_position: position,
      client_timestamp: new Date().toISOString(),
      played_segments: this.takeSegments(),
    };
  }

  startTimer() {
    if (this.timer === null && !this.stopped) this.timer = setInterval(() => this.beat(), HEARTBEAT_MS);
  }

  stopTimer() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** One heartbeat now; heartbeats go one after another, in order. A refused one (4xx)
   *  is reported through onError; ranges of one that could not be sent are kept. */
  beat() {
    if (this.stopped) return this.inFlight;
    const reading = this.reading();
    this.inFlight = this.inFlight.then(async () => {
      try {
        await api("/api/progress", { method: "POST", body: reading });
        this.lastError = null;
        this.onSaved?.(reading);
      } catch (error) {
        if (error.status === 0 || error.status >= 500) this.pending.unshift(...reading.played_segments);
        this.lastError = error;
        this.onError?.(error);
      }
    });
    return this.inFlight;
  }

  /** The last reading as the page goes away: a beacon survives the page's end. */
  beacon() {
    if (this.stopped || this.video.currentTime === 0) return;
    const current = session.get();
    if (!current) return;
    const body = JSON.stringify({ ...this.reading(), access_token: current.token });
    const sent = navigator.sendBeacon("/api/progress", new Blob([body], { type: "application/json" }));
    if (!sent) {
      fetch("/api/progress", { method: "POST", keepalive: true, body,
                               headers: { "Content-Type": "application/json" } }).catch(() => {});
    }
  }

  /** Leaving the lesson inside the app: one last heartbeat, then nothing more. */
  async stop() {
    if (this.stopped) return;
    this.stopTimer();
    this.closeRun();
    if (this.video.currentTime > 0) await this.beat();
    this.stopped = true;
    for (const remove of this.listeners) remove();
  }
}
