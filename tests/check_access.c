// SPDX-License-Identifier: MIT
/*
 * Access control on the control socket, with the real daemon and real users:
 * changing commands need root or admin_group (primary or supplementary group,
 * read with SO_PEERCRED / SO_PEERGROUPS); with readonly_open = no even the
 * read-only ones do; one user cannot hold more than 512 connections. Each
 * refusal is checked with its message. Needs root (to become other users).
 */
#include "tests/harness.h"
#include "dedupd/lib/dedup.h"

#include <sys/mman.h>

#include <grp.h>

#define NOBODY 65534
#define ADMIN_GID 4242 /* a group by number: no /etc/group entry needed */

/* In a child: become uid NOBODY with the given groups, run the admin
 * command; exit status 0 if its status is want and its text holds needle. */
static bool admin_as(const char *sock, const gid_t *groups, int ngroups, const char *cmd,
		     int want, const char *needle)
{
	pid_t pid = fork();
	int st;

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char *text = NULL;
		int r;

		if (setgroups((size_t)ngroups, groups) < 0 || setgid(NOBODY) < 0 ||
		    setuid(NOBODY) < 0)
			_exit(90);
		r = h_admin(sock, cmd, &text);
		if (r != want || (needle && (!text || !strstr(text, needle)))) {
			fprintf(stderr, "%s: status %d (want %d): %s\n", cmd, r, want,
				text ? text : "(no text)");
			_exit(1);
		}
		_exit(0);
	}
	waitpid(pid, &st, 0);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static pid_t start(char *sock, size_t len, const char *tag, const char *const *extra)
{
	const char *args[16] = { "--no-bpf", "--set", "pressure.psi_trigger=", "--set",
				 "daemon.socket_mode=0666" };
	int n = 5;

	for (; extra && *extra && n < 15; extra++)
		args[n++] = *extra;
	args[n] = NULL;
	h_sock_path(sock, len, tag);
	chmod(h_build(), 0755);
	return h_daemon_start(sock, args);
}

START_TEST(test_set_needs_root_or_admin_group)
{
	const char *extra[] = { "--set", "daemon.admin_group=4242", NULL };
	gid_t none[1] = { NOBODY }, admin[2] = { NOBODY, ADMIN_GID };
	char sock[256];
	pid_t d;

	H_SKIP_UNLESS_ROOT();
	d = start(sock, sizeof(sock), "access-set", extra);
	/* Reading is open by default. */
	ck_assert(admin_as(sock, none, 1, "stats", 0, "pages_shared"));
	/* Changing is not, and the message says who may. */
	ck_assert(admin_as(sock, none, 1, "set pages_to_scan=100", -EPERM,
			   "only root and members of group 4242"));
	/* A supplementary group is enough. */
	ck_assert(admin_as(sock, admin, 2, "set pages_to_scan=123", 0, NULL));
	ck_assert_int_eq(h_stat(sock, "pages_scanned") >= 0, 1);
	h_daemon_stop(d, SIGTERM);
}
END_TEST

START_TEST(test_set_root_only_by_default)
{
	gid_t none[1] = { NOBODY };
	char sock[256], *t = NULL;
	pid_t d;

	H_SKIP_UNLESS_ROOT();
	d = start(sock, sizeof(sock), "access-root", NULL);
	ck_assert(admin_as(sock, none, 1, "set pages_to_scan=100", -EPERM,
			   "set: only root may change dedupd"));
	ck_assert_int_eq(h_admin(sock, "set pages_to_scan=100", &t), 0);
	free(t);
	h_daemon_stop(d, SIGTERM);
}
END_TEST

START_TEST(test_readonly_closed)
{
	const char *extra[] = { "--set", "daemon.admin_group=4242", "--set",
				"daemon.readonly_open=no", NULL };
	gid_t none[1] = { NOBODY }, admin[2] = { NOBODY, ADMIN_GID };
	char sock[256], *t = NULL;
	pid_t d;

	H_SKIP_UNLESS_ROOT();
	d = start(sock, sizeof(sock), "access-ro", extra);
	ck_assert(admin_as(sock, none, 1, "stats", -EPERM, "readonly_open is off"));
	ck_assert(admin_as(sock, none, 1, "clients", -EPERM, "readonly_open is off"));
	ck_assert(admin_as(sock, admin, 2, "stats", 0, "pages_shared"));
	ck_assert_int_eq(h_admin(sock, "state", &t), 0);
	free(t);
	h_daemon_stop(d, SIGTERM);
}
END_TEST

START_TEST(test_connections_per_user)
{
	char sock[256];
	pid_t d, pid;
	int st;

	H_SKIP_UNLESS_ROOT();
	d = start(sock, sizeof(sock), "access-conns", NULL);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char buf[DD_MSG_MAX];
		const struct dd_msg_result *res = (const void *)buf;
		int open_ok = 0, refused = 0;

		if (setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
			_exit(90);
		for (int i = 0; i < 600; i++) {
			int fd = dd_sock_connect(sock);
			ssize_t n;

			if (fd < 0)
				_exit(91);
			/* A refused one gets a RESULT and is closed at once. */
			n = dd_msg_recv(fd, buf, sizeof(buf), NULL, i < 500 ? 0 : 200);
			if (n > 0 && res->status == -EMFILE &&
			    strstr(res->text, "too many connections from uid 65534")) {
				refused++;
				close(fd);
			} else {
				open_ok++;
			}
		}
		fprintf(stderr, "connections: %d kept, %d refused\n", open_ok, refused);
		_exit(open_ok == 512 && refused == 88 ? 0 : 1);
	}
	waitpid(pid, &st, 0);
	/* Root is not limited, and the daemon still answers. */
	ck_assert_int_ge(h_stat(sock, "pages_scanned"), 0);
	h_daemon_stop(d, SIGTERM);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "per-user limit: status %d", st);
}
END_TEST

/* A process cannot make the daemon allocate records for more than the host's
 * memory: a huge MAP_NORESERVE mapping is refused with the figures. */
START_TEST(test_registration_bounded)
{
	char sock[256];
	pid_t d, pid;
	int st;

	H_SKIP_UNLESS_ROOT();
	d = start(sock, sizeof(sock), "access-big", NULL);
	setenv("DEDUPD_SOCKET", sock, 1);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		size_t len = (size_t)1 << 40; /* 1 TiB of address space, nothing resident */
		void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		int r;

		if (p == MAP_FAILED)
			_exit(90);
		r = dedup_register(p, len, NULL);
		fprintf(stderr, "1 TiB: %d %s\n", r, dedup_strerror());
		if (r != -E2BIG || !strstr(dedup_strerror(), "more than the host's memory"))
			_exit(1);
		/* A reasonable part of it is fine. */
		r = dedup_register(p, (size_t)1 << 30, NULL);
		_exit(r == 0 ? 0 : 2);
	}
	waitpid(pid, &st, 0);
	h_daemon_stop(d, SIGTERM);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
}
END_TEST

static Suite *access_suite(void)
{
	Suite *s = suite_create("access");
	TCase *tc = tcase_create("socket");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_set_needs_root_or_admin_group);
	tcase_add_test(tc, test_set_root_only_by_default);
	tcase_add_test(tc, test_readonly_closed);
	tcase_add_test(tc, test_connections_per_user);
	tcase_add_test(tc, test_registration_bounded);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(access_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
