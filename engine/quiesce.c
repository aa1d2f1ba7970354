/* qmpbackupfs — quiescing and pausing the guest around a backup's
 * transaction: the freeze (with its thaw guard), the thaw on every path,
 * --pause and its resume (see engine-int.h). */
#include "engine/engine-int.h"
#include "common/error.h"
#include "common/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Append to RES's quiesce note ("; " between parts). */
void
eng_quiesce_note (eng_run *r, const char *fmt, ...)
{
  if (!r->res)
    return;
  char part[400];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (part, sizeof part, fmt, ap);
  va_end (ap);
  char *n = r->res->quiesce_note;
  size_t len = strlen (n);
  snprintf (n + len, sizeof r->res->quiesce_note - len, "%s%s", len ? "; " : "", part);
}

/* Thaw the guest if a freeze may have been sent.  Not subject to the cancel
 * flag; the first command resynchronises (the freeze's reply may still be in
 * flight); bounded by ENGINE_THAW_BUDGET_MS; confirmed with
 * guest-fsfreeze-status.  On success the guard is told and exits; on
 * failure our agent connection is closed and the guard takes over, and the
 * failure goes into the quiesce note and r->thaw_warning.  Keeps the
 * current error.  Closes the agent connection in every case. */
void
eng_thaw (eng_run *r)
{
  if (!r->frozen) {
    qga_close (r->g);
    r->g = NULL;
    return;
  }
  r->frozen = false;
  qb_err code = qb_error_code ();
  char *msg = qb_strdup (qb_error_msg ());
  uint64_t deadline = qb_mono_ms () + ENGINE_THAW_BUDGET_MS;
  bool ok = false;
  char why[256] = "no connection to the guest agent";
  if (r->g) {
    qga_set_cancel (r->g, NULL);
    for (int i = 0; i < ENGINE_THAW_TRIES && !ok; i++) {
      uint64_t now = qb_mono_ms ();
      if (now >= deadline)
        break;
      int step = deadline - now < QGA_TIMEOUT_MS ? (int) (deadline - now) : QGA_TIMEOUT_MS;
      if (qga_thaw (r->g, step) >= 0) {
        now = qb_mono_ms ();
        int left = now < deadline ? (int) (deadline - now) : 0;
        int st = qga_frozen (r->g, left < 2000 ? 2000 : left > QGA_TIMEOUT_MS ? QGA_TIMEOUT_MS : left);
        if (st == 0 || (st < 0 && qb_error_code () == QB_EQMP))
          ok = true;   /* thawed, or thaw answered and status refused */
        else if (st == 1)
          qb_error_set (QB_EIO, "the guest agent still reports the guest frozen after a thaw");
      }
      if (!ok) {
        snprintf (why, sizeof why, "%s", qb_error_msg ());
        if (qb_error_code () == QB_EHOSTDOWN)
          break;       /* our connection is gone: a fresh one is the guard's */
      }
    }
  }
  qga_close (r->g);   /* the guard can connect only once we are gone */
  r->g = NULL;
  if (ok)
    thawguard_release (r->guard, true);
  else {
    r->thaw_failed = true;
    char guard[64] = "";
    if (r->guard)
      snprintf (guard, sizeof guard, "; a thaw guard process keeps trying for %d s",
                THAWGUARD_BUDGET_MS / 1000);
    snprintf (r->thaw_warning, sizeof r->thaw_warning,
              "WARNING: the guest may still be frozen: thaw failed: %.160s%s", why, guard);
    eng_quiesce_note (r, "%s", r->thaw_warning);
    thawguard_release (r->guard, false);
  }
  r->guard = NULL;
  qb_error_set (code, "%s", msg);
  free (msg);
}

/* Freeze the guest's filesystems as the options ask.  "Quiesced" means at
 * least one filesystem was frozen: a freeze of none, like an agent that does
 * not answer, fails an explicit quiesce and makes a default one fall back to
 * crash-consistent with a note.  A thaw guard is started before the freeze
 * is sent; from then on every path thaws (eng_thaw()). */
int
eng_quiesce (eng_run *r, const char *qga_path)
{
  quiesce_mode m = r->opts->quiesce;
  if (m == QUIESCE_OFF)
    return 0;
  if (!qga_path) {
    if (m == QUIESCE_ON)
      return qb_error_set (QB_EINVAL, "quiesce was asked for, but VM %s has no guest agent socket",
                           r->vm);
    return 0;
  }
  eng_report (r, "quiescing");
  r->g = qga_connect (qga_path, QGA_TIMEOUT_MS);
  int n = -1;
  if (r->g) {
    r->guard = thawguard_start (qga_path, THAWGUARD_BUDGET_MS);
    if (!r->guard)
      qb_error_prefix ("not freezing the guest without a thaw guard");
    else {
      qga_set_cancel (r->g, r->opts->cancel);
      r->frozen = true;   /* from here on a freeze may be running in the guest */
      n = qga_freeze (r->g, QGA_TIMEOUT_MS);
    }
  }
  if (n > 0) {
    if (r->res) {
      r->res->quiesced = true;
      r->res->frozen_fs = n;
    }
    return 0;
  }
  if (n == 0)
    qb_error_set (QB_EQMP, "the guest agent froze no filesystem (guest-fsfreeze-freeze "
                  "returned 0: nothing in the guest it can freeze)");
  /* Canceled, timed out, failed or froze nothing: a freeze may still
   * complete in the guest, so thaw in every case. */
  eng_thaw (r);
  if (qb_error_code () == QB_ECANCELED)
    return -1;
  if (m == QUIESCE_ON) {
    qb_error_prefix ("quiescing the guest (the backup needs it; retry without quiesce "
                     "for a crash-consistent backup)");
    return -1;
  }
  char why[256];
  snprintf (why, sizeof why, "%s", qb_error_msg ());
  /* After the thaw's warning, if any (it comes first: notes are truncated). */
  eng_quiesce_note (r, "not quiesced, crash-consistent: %s%s", n == 0 ? "" : "the guest agent failed: ",
                why);
  qb_error_clear ();
  return 0;
}

/* ---- --pause: the VM stopped while the backup runs ---- */

/* With opts->pause, stop VM R if it runs (a paused or not yet started VM is
 * left alone, and left so afterwards).  Once "stop" may have been sent,
 * eng_resume owes a "cont".  0, or -1 when QEMU refused. */
int
eng_pause (eng_run *r)
{
  if (!r->opts->pause)
    return 0;
  json_object *st = qmp_execute (r->q, "query-status", NULL, QMP_COMMAND_TIMEOUT_MS);
  if (!st) {
    qb_error_prefix ("asking QEMU whether VM %s runs (for --pause)", r->vm);
    return -1;
  }
  json_object *running;
  bool run = json_object_object_get_ex (st, "running", &running)
    && json_object_get_boolean (running);
  json_object_put (st);
  if (!run)
    return 0;
  eng_report (r, "pausing");
  r->paused = true;   /* from here on "cont" is owed, even if "stop" seems to fail */
  if (qmp_run (r->q, "stop", NULL, QMP_COMMAND_TIMEOUT_MS) < 0) {
    qb_error_prefix ("pausing VM %s", r->vm);
    return -1;
  }
  if (r->res)
    r->res->paused = true;
  return 0;
}

/* Resume VM R if eng_pause stopped it: "cont", not subject to the cancel
 * flag.  A failure becomes a WARNING in res->pause_note (returned, or NULL
 * when resumed or nothing was owed).  Keeps the current error. */
const char *
eng_resume (eng_run *r)
{
  static __thread char note[256];
  if (!r->paused)
    return NULL;
  r->paused = false;
  qb_err code = qb_error_code ();
  char *msg = qb_strdup (qb_error_msg ());
  int rc = -1;
  if (r->q) {
    qmp_set_cancel (r->q, NULL);
    rc = qmp_run (r->q, "cont", NULL, QMP_COMMAND_TIMEOUT_MS);
  }
  if (rc < 0)
    snprintf (note, sizeof note, "WARNING: VM %s stays paused, resuming it failed (%s); "
              "resume it with the QMP command \"cont\"", r->vm,
              r->q ? qb_error_msg () : "no QMP connection");
  if (rc < 0 && r->res)
    snprintf (r->res->pause_note, sizeof r->res->pause_note, "%s", note);
  if (code != QB_OK)
    qb_error_set (code, "%s", msg);
  else
    qb_error_clear ();
  free (msg);
  return rc < 0 ? note : NULL;
}
