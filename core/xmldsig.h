/*
 * xmldsig.h — structured XML documents and the enveloped XML-DSig profile
 * (host API 1.2, channels/gw_channel.h; PROTOCOLS.md §B.3), on libxml2.
 *
 * The one profile, signed and verified:
 *
 *   <root> … <Signature xmlns="http://www.w3.org/2000/09/xmldsig#">
 *     <SignedInfo>
 *       <CanonicalizationMethod Algorithm="http://www.w3.org/TR/2001/REC-xml-c14n-20010315"/>
 *       <SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>
 *       <Reference URI="">
 *         <Transforms><Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/></Transforms>
 *         <DigestMethod Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"/>
 *         <DigestValue>…</DigestValue>
 *       </Reference>
 *     </SignedInfo>
 *     <SignatureValue>…</SignatureValue>
 *   </Signature></root>
 *
 * i.e. inclusive C14N 1.0 without comments, RSA PKCS#1 v1.5 with SHA-256
 * over C14N(SignedInfo), one same-document reference to the whole document
 * with the enveloped-signature transform and a SHA-1 digest, the Signature
 * the last element child of the root.  Verification rejects anything else
 * (other algorithms, references, transforms, a second Signature, dsig
 * elements outside the Signature, …): the signature-wrapping defences.
 *
 * Every document is parsed the same way (a document read with gw_xml_get
 * after gw_xmldsig_verify is the very tree that was verified):
 *   - at most GW_XML_MAX bytes, UTF-8 (a declared encoding must be UTF-8);
 *   - no DOCTYPE (the parse stops at it: no entity is ever declared), so no
 *     entities beyond the five predefined ones and character references;
 *   - no network (XML_PARSE_NONET), no XInclude, libxml2's depth limit;
 *   - no comments and no processing instructions anywhere (comments are not
 *     covered by a URI="" reference: text split by one could be read
 *     differently from what was signed);
 *   - well-formed, namespace-well-formed.
 * All functions are reentrant (libxml2 state is per document; its error
 * reporting is silenced per thread for the duration of a call).
 */
#ifndef GW_XMLDSIG_H
#define GW_XMLDSIG_H

#include "gw.h"

#define GW_XML_MAX (1u << 20)

#define GW_DSIG_NS "http://www.w3.org/2000/09/xmldsig#"
#define GW_DSIG_C14N "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
#define GW_DSIG_RSA_SHA256 "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
#define GW_DSIG_ENVELOPED "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
#define GW_DSIG_SHA1 "http://www.w3.org/2000/09/xmldsig#sha1"

/* Appends s escaped for XML element text and attribute values: & < > " '
 * as entity references, CR as &#13; (so that it survives parsing), TAB and
 * LF as they are.  GW_EINVAL (nothing appended) for invalid UTF-8 or a
 * character XML 1.0 cannot carry (C0 controls, U+FFFE, U+FFFF). */
gw_err_t gw_xml_escape(const char *s, size_t n, gw_buf_t *out);

/* The text of the element at path, appended to out.  path is '/'-separated
 * local names from the root: "document/request/head/ReqMsgId" (the first
 * step names the root element).  Only elements in no namespace match.
 * Text and CDATA children are concatenated.
 *   GW_ENOENT  a step matches no element;
 *   GW_EPARSE  the document is malformed or outside the rules above, a step
 *              matches two sibling elements (ambiguous), or the element has
 *              element children;
 *   GW_ETOOBIG the document or the text is too large. */
gw_err_t gw_xml_get(const char *doc, size_t len, const char *path, gw_buf_t *out);

/* Calls cb for every leaf element (an element without element children)
 * below the element at path, in document order, with its path relative to
 * that element ("RespInfo/ResultStatus") and its text.  An element with
 * both element children and non-whitespace text, or any element in a
 * namespace, is GW_EPARSE; so is a callback's GW_EEXIST (a repeated key).
 * Errors as gw_xml_get; a callback's other error is returned as it is. */
typedef gw_err_t (*gw_xml_leaf_cb)(void *udata, const char *key, size_t klen, const char *val,
                                   size_t vlen);
gw_err_t gw_xml_leaves(const char *doc, size_t len, const char *path, gw_xml_leaf_cb cb,
                       void *udata);

/* Signs an unsigned document: appends to signed_doc the input bytes with
 * the profile's <Signature> (compact, default dsig namespace, Base64 without
 * line breaks) inserted right before the root's end tag, so it becomes the
 * root's last child.  The input must not contain a Signature (or any dsig
 * element) and the root must have an end tag (not <root/>).  The result is
 * verified before it is returned.  GW_EINVAL for an unsuitable document,
 * GW_EPARSE for a malformed one, GW_EKEY when key has no private half. */
gw_err_t gw_xmldsig_sign(const char *doc, size_t len, gw_rsa_key_t *key, gw_buf_t *signed_doc);

/* GW_OK when doc carries exactly the profile's signature and it verifies
 * with key (the digest of the canonical document without the Signature, then
 * the RSA-SHA256 signature over the canonical SignedInfo); GW_ESIGN for
 * anything else, malformed documents included.  diag (may be NULL) gets one
 * line for humans: the reason of a rejection, or what was verified. */
gw_err_t gw_xmldsig_verify(const char *doc, size_t len, gw_rsa_key_t *key, gw_buf_t *diag);

#endif /* GW_XMLDSIG_H */
