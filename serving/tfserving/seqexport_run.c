/*
 * seqexport_run: load a SavedModel with TensorFlow's C API, the way TF Serving
 * does (C++ SavedModel loader, one tag set), and run a list of feeds -> fetches
 * given by graph tensor name ("op:index").
 *
 * Usage: seqexport_run EXPORT_DIR TAGS REQUEST_FILE RESPONSE_FILE
 *   TAGS: comma-separated, e.g. "serve".
 *
 * REQUEST_FILE (header lines are text, tensor bytes are raw, host byte order):
 *   SEQEXPORT-RUN 1
 *   runs <n>
 *   then n times:
 *     run <label> <n_feeds> <n_fetches>
 *     n_feeds times:  feed <tensor> <dtype> <ndims> <dim>... <nbytes>\n<nbytes bytes>\n
 *     n_fetches times: fetch <tensor>
 *
 * RESPONSE_FILE:
 *   SEQEXPORT-RESULT 1
 *   tf_version <version>
 *   load_us <microseconds>
 *   runs <n>
 *   then per run, either
 *     run <label> ok <n_outputs> <run_microseconds>
 *     n_outputs times: out <tensor> <dtype> <ndims> <dim>... <nbytes>\n<nbytes bytes>\n
 *   or
 *     run <label> error <run_microseconds> <message_length>\n<message>\n
 *
 * <dtype> is TF_DataType (the same numbers as tensorflow.DataType). Only types
 * with a fixed element size are supported (no strings, resources, variants).
 *
 * Exit status: 0 every run was attempted (each run says ok or error);
 * 2 usage error or malformed request file; 3 the SavedModel did not load.
 * Messages go to stderr.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tensorflow/c/c_api.h"

#define MAX_LINE 4096
#define MAX_NAME 1024
#define MAX_DIMS 32
#define MAX_TENSORS 4096
#define MAX_TAGS 16

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(int code, const char* what, const char* detail) {
  fprintf(stderr, "seqexport_run: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  exit(code);
}

/* Reads one header line (without the newline) or dies: the file is malformed. */
static void read_line(FILE* f, char* buf, const char* expected) {
  if (!fgets(buf, MAX_LINE, f)) die(2, "request file ended early; expected", expected);
  size_t n = strlen(buf);
  if (n == 0 || buf[n - 1] != '\n') die(2, "request header line too long or unterminated; expected", expected);
  buf[n - 1] = '\0';
}

/* Splits "op:index" into the graph operation and its output index. */
static TF_Output find_output(TF_Graph* graph, const char* tensor, char* err, size_t err_len) {
  TF_Output out = {NULL, 0};
  char op[MAX_NAME];
  const char* colon = strrchr(tensor, ':');
  long index = 0;
  size_t op_len = colon ? (size_t)(colon - tensor) : strlen(tensor);
  if (op_len == 0 || op_len >= sizeof op) {
    snprintf(err, err_len, "tensor name '%s' is not of the form op:index", tensor);
    return out;
  }
  memcpy(op, tensor, op_len);
  op[op_len] = '\0';
  if (colon) {
    char* end = NULL;
    errno = 0;
    index = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || *end != '\0' || index < 0) {
      snprintf(err, err_len, "tensor name '%s' has a bad output index", tensor);
      return out;
    }
  }
  TF_Operation* oper = TF_GraphOperationByName(graph, op);
  if (!oper) {
    snprintf(err, err_len, "tensor '%s': the graph has no operation named '%s'", tensor, op);
    return out;
  }
  if (index >= TF_OperationNumOutputs(oper)) {
    snprintf(err, err_len, "tensor '%s': operation '%s' has %d outputs, not %ld", tensor, op,
             TF_OperationNumOutputs(oper), index + 1);
    return out;
  }
  out.oper = oper;
  out.index = (int)index;
  return out;
}

static void write_error(FILE* out, const char* label, int64_t us, const char* message) {
  fprintf(out, "run %s error %lld %zu\n", label, (long long)us, strlen(message));
  fwrite(message, 1, strlen(message), out);
  fputc('\n', out);
}

/* Parses, runs and answers one `run` block; a problem with the run (not with
 * the file) becomes an error answer and the next run goes on. */
static void do_run(FILE* in, FILE* out, TF_Graph* graph, TF_Session* session) {
  char line[MAX_LINE], label[MAX_NAME], name[MAX_NAME];
  char err[2 * MAX_LINE] = "";
  int n_feeds = 0, n_fetches = 0;
  read_line(in, line, "run");
  if (sscanf(line, "run %1023s %d %d", label, &n_feeds, &n_fetches) != 3 || n_feeds < 0 ||
      n_fetches < 0 || n_feeds > MAX_TENSORS || n_fetches > MAX_TENSORS)
    die(2, "bad run line", line);

  TF_Output* feeds = calloc((size_t)n_feeds + 1, sizeof(TF_Output));
  TF_Tensor** values = calloc((size_t)n_feeds + 1, sizeof(TF_Tensor*));
  TF_Output* fetches = calloc((size_t)n_fetches + 1, sizeof(TF_Output));
  TF_Tensor** results = calloc((size_t)n_fetches + 1, sizeof(TF_Tensor*));
  char (*fetch_names)[MAX_NAME] = calloc((size_t)n_fetches + 1, MAX_NAME);
  if (!feeds || !values || !fetches || !results || !fetch_names) die(2, "out of memory", NULL);

  for (int i = 0; i < n_feeds; ++i) {
    int dtype = 0, ndims = 0, consumed = 0;
    int64_t dims[MAX_DIMS];
    long long nbytes = 0;
    read_line(in, line, "feed");
    if (sscanf(line, "feed %1023s %d %d%n", name, &dtype, &ndims, &consumed) != 3 || ndims < 0 ||
        ndims > MAX_DIMS)
      die(2, "bad feed line", line);
    const char* cursor = line + consumed;
    long long elements = 1;
    for (int d = 0; d < ndims; ++d) {
      long long dim = 0;
      int used = 0;
      if (sscanf(cursor, " %lld%n", &dim, &used) != 1 || dim < 0) die(2, "bad feed dims", line);
      dims[d] = dim;
      elements *= dim;
      cursor += used;
    }
    if (sscanf(cursor, " %lld", &nbytes) != 1 || nbytes < 0) die(2, "bad feed byte count", line);
    size_t item = TF_DataTypeSize((TF_DataType)dtype);
    TF_Tensor* tensor = NULL;
    if (!err[0] && item == 0) {
      snprintf(err, sizeof err, "feed '%s': dtype %d has no fixed element size (not supported here)", name,
               dtype);
    } else if (!err[0] && (long long)item * elements != nbytes) {
      snprintf(err, sizeof err, "feed '%s': %lld bytes for %lld elements of %zu bytes", name, nbytes,
               elements, item);
    }
    if (!err[0]) {
      tensor = TF_AllocateTensor((TF_DataType)dtype, dims, ndims, (size_t)nbytes);
      if (!tensor) snprintf(err, sizeof err, "feed '%s': could not allocate %lld bytes", name, nbytes);
    }
    if (tensor) {
      if (nbytes > 0 && fread(TF_TensorData(tensor), 1, (size_t)nbytes, in) != (size_t)nbytes)
        die(2, "request file ended inside the bytes of feed", name);
    } else if (nbytes > 0 && fseek(in, (long)nbytes, SEEK_CUR) != 0) {
      die(2, "request file ended inside the bytes of feed", name);
    }
    if (fgetc(in) != '\n') die(2, "missing newline after the bytes of feed", name);
    values[i] = tensor;
    if (!err[0]) {
      feeds[i] = find_output(graph, name, err, sizeof err);
    }
  }
  for (int i = 0; i < n_fetches; ++i) {
    read_line(in, line, "fetch");
    if (sscanf(line, "fetch %1023s", fetch_names[i]) != 1) die(2, "bad fetch line", line);
    if (!err[0]) fetches[i] = find_output(graph, fetch_names[i], err, sizeof err);
  }

  int64_t start = now_us();
  if (!err[0]) {
    TF_Status* status = TF_NewStatus();
    TF_SessionRun(session, NULL, feeds, values, n_feeds, fetches, results, n_fetches, NULL, 0, NULL,
                  status);
    if (TF_GetCode(status) != TF_OK)
      snprintf(err, sizeof err, "TF_SessionRun failed (code %d): %s", (int)TF_GetCode(status),
               TF_Message(status));
    TF_DeleteStatus(status);
  }
  int64_t elapsed = now_us() - start;
  for (int i = 0; !err[0] && i < n_fetches; ++i) {
    if (!results[i] || TF_DataTypeSize(TF_TensorType(results[i])) == 0)
      snprintf(err, sizeof err, "fetch '%s': output dtype %d has no fixed element size (not supported here)",
               fetch_names[i], results[i] ? (int)TF_TensorType(results[i]) : -1);
  }
  if (err[0]) {
    write_error(out, label, elapsed, err);
  } else {
    fprintf(out, "run %s ok %d %lld\n", label, n_fetches, (long long)elapsed);
    for (int i = 0; i < n_fetches; ++i) {
      TF_Tensor* t = results[i];
      int ndims = TF_NumDims(t);
      fprintf(out, "out %s %d %d", fetch_names[i], (int)TF_TensorType(t), ndims);
      for (int d = 0; d < ndims; ++d) fprintf(out, " %lld", (long long)TF_Dim(t, d));
      size_t nbytes = TF_TensorByteSize(t);
      fprintf(out, " %zu\n", nbytes);
      if (nbytes) fwrite(TF_TensorData(t), 1, nbytes, out);
      fputc('\n', out);
    }
  }
  for (int i = 0; i < n_feeds; ++i)
    if (values[i]) TF_DeleteTensor(values[i]);
  for (int i = 0; i < n_fetches; ++i)
    if (results[i]) TF_DeleteTensor(results[i]);
  free(feeds);
  free(values);
  free(fetches);
  free(results);
  free(fetch_names);
}

int main(int argc, char** argv) {
  if (argc != 5) die(2, "usage: seqexport_run EXPORT_DIR TAGS REQUEST_FILE RESPONSE_FILE", NULL);
  const char* export_dir = argv[1];
  char tag_buf[MAX_LINE];
  const char* tags[MAX_TAGS];
  int n_tags = 0;
  snprintf(tag_buf, sizeof tag_buf, "%s", argv[2]);
  for (char* tok = strtok(tag_buf, ","); tok && n_tags < MAX_TAGS; tok = strtok(NULL, ","))
    tags[n_tags++] = tok;
  if (n_tags == 0) die(2, "no tags given", NULL);

  FILE* in = fopen(argv[3], "rb");
  if (!in) die(2, "cannot open the request file", argv[3]);
  char line[MAX_LINE];
  int runs = 0;
  read_line(in, line, "SEQEXPORT-RUN 1");
  if (strcmp(line, "SEQEXPORT-RUN 1") != 0) die(2, "not a seqexport request file (version 1)", line);
  read_line(in, line, "runs");
  if (sscanf(line, "runs %d", &runs) != 1 || runs < 0) die(2, "bad runs line", line);

  TF_Graph* graph = TF_NewGraph();
  TF_Status* status = TF_NewStatus();
  TF_SessionOptions* options = TF_NewSessionOptions();
  int64_t start = now_us();
  TF_Session* session =
      TF_LoadSessionFromSavedModel(options, NULL, export_dir, tags, n_tags, graph, NULL, status);
  int64_t load_us = now_us() - start;
  if (TF_GetCode(status) != TF_OK) die(3, "TF_LoadSessionFromSavedModel failed", TF_Message(status));

  FILE* out = fopen(argv[4], "wb");
  if (!out) die(2, "cannot create the response file", argv[4]);
  fprintf(out, "SEQEXPORT-RESULT 1\ntf_version %s\nload_us %lld\nruns %d\n", TF_Version(),
          (long long)load_us, runs);
  for (int r = 0; r < runs; ++r) do_run(in, out, graph, session);
  if (fclose(out) != 0) die(2, "cannot write the response file", argv[4]);
  fclose(in);

  TF_CloseSession(session, status);
  TF_DeleteSession(session, status);
  TF_DeleteSessionOptions(options);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
  return 0;
}
