/* Sandbox holder process for the egress-guard CRI suite (the pod's "pause" container).
 * Blocks the signals it cares about and takes them synchronously: SIGCHLD reaps orphans,
 * SIGTERM or SIGINT ends it with status 0. The suite builds it with `gcc -static`. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>

int main(void) {
  sigset_t wanted;
  sigemptyset(&wanted);
  sigaddset(&wanted, SIGTERM);
  sigaddset(&wanted, SIGINT);
  sigaddset(&wanted, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &wanted, NULL) != 0) return 1;
  for (;;) {
    int sig = sigwaitinfo(&wanted, NULL);
    if (sig == SIGTERM || sig == SIGINT) return 0;
    if (sig == SIGCHLD)
      while (waitpid(-1, NULL, WNOHANG) > 0) {
      }
  }
}
