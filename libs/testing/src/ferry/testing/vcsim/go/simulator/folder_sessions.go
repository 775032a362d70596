package simulator

// Ferry's overlay: vCenter's session check on the datastore HTTP path.
//
// vCenter serves /folder only to a request that carries the cookie of a live API
// session (vmware_soap_session); once the session is gone (idle timeout, logout,
// an administrator's TerminateSession) the same cookie gets 401 Unauthorized.
// The stock simulator serves /folder to anyone. FolderSessions wraps the server's
// handler so that /folder requests are checked against the simulator's sessions;
// every other path is served as before.
//
// A /folder request is not session activity here: it reads the session and leaves
// its LastActiveTime as it was, so with -idle-timeout a session that only carries
// datastore reads ends one to two idle timeouts after its last API call. That is
// the case a reader of vCenter must plan for: nothing we found says a datastore
// transfer resets vCenter's idle timer, and virt-v2v's vCenter input renews its
// /folder cookie every 25 minutes however busy the copy ("VMware authentication
// expires after 30 minutes"), which suggests that reads do not keep it alive.

import (
	"net/http"
	"strings"

	"github.com/vmware/govmomi/vim25/soap"
)

// NoFlatReads makes /folder answer 404 for every -flat.vmdk, as a vSAN or vVols
// datastore does: there a disk is an object, with no flat extent to read by path
// (its descriptor stays readable). Set by the launcher's -no-flat-reads.
var NoFlatReads bool

// FolderSessions returns next with the session check on /folder requests.
func FolderSessions(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if NoFlatReads && strings.HasPrefix(r.URL.Path, folderPrefix) &&
			strings.HasSuffix(r.URL.Path, "-flat.vmdk") {
			http.NotFound(w, r)
			return
		}
		if strings.HasPrefix(r.URL.Path, folderPrefix) {
			cookie, err := r.Cookie(soap.SessionCookieName)
			if err != nil {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			if _, ok := Map.SessionManager().getSession(cookie.Value); !ok {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
